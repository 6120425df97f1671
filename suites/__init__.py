"""Shipped suite files, the tiny model and corpus builder, and the tiny benchmark tasks."""
