"""A plugin written against a contract version this normcore does not speak."""

import numpy as np

from normcore.backend import Backend
from normcore_broken import WRONG_API_VERSION


class WrongApiBackend(Backend):
    name = "broken-api"
    api_version = WRONG_API_VERSION

    def asarray(self, obj, dtype=None):
        return np.asarray(obj, dtype=dtype)

    def to_numpy(self, arr):
        return np.asarray(arr)
