"""normcore: torch.nn normalization layers on pluggable array backends."""

__version__ = "0.1.0"
