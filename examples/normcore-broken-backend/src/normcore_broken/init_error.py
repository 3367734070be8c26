"""A plugin whose constructor raises (e.g. a driver that fails to initialise)."""

from normcore.backend import Backend
from normcore_broken import INIT_MESSAGE


class InitErrorBackend(Backend):
    name = "broken-init"

    def __init__(self) -> None:
        raise RuntimeError(INIT_MESSAGE)

    def asarray(self, obj, dtype=None):  # pragma: no cover - never constructed
        raise NotImplementedError

    def to_numpy(self, arr):  # pragma: no cover - never constructed
        raise NotImplementedError
