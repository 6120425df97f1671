"""Shipped suite YAML files and lm-eval task data (data only)."""
