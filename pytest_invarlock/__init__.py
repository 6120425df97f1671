"""pytest-invarlock: InvarLock's edit-detection validation as a pytest suite."""

__version__ = "0.1.0"
