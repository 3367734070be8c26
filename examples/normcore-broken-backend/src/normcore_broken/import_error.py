"""A plugin module whose import fails (e.g. a missing compiled extension)."""

from normcore_broken import IMPORT_MESSAGE

raise ImportError(IMPORT_MESSAGE)
