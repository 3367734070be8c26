"""Repository-level pytest configuration."""

# The golden generator imports torch, which normcore never needs at run time.
collect_ignore = ["normcore/testing/golden/make_golden.py"]
