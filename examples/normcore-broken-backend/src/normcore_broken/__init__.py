"""Deliberately broken normcore plugins (for tests). Importing this package itself is fine."""

INFO = {"device": "cpu", "priority": -1, "description": "deliberately broken (tests)"}

#: The messages the broken backends raise, so tests can look for them.
IMPORT_MESSAGE = "normcore_broken: this module fails to import on purpose"
INIT_MESSAGE = "normcore_broken: this constructor fails on purpose"
WRONG_API_VERSION = 999
