"""Puts this directory on sys.path (pytest's prepend import mode), so every test module imports `helpers`."""
