"""Repository-level pytest configuration."""

import importlib.util

# The golden generator imports torch, which normcore never needs at run time.
collect_ignore = ["normcore/testing/golden/make_golden.py"]

# normcore.torch (the PyTorch bridge, an optional extra) imports torch: without torch its
# modules' doctests are not collected (tests/test_torch_bridge.py skips itself).
if importlib.util.find_spec("torch") is None:
    collect_ignore.append("normcore/torch")
