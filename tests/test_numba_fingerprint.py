"""Every module that numba caches kernels of carries the fingerprint of the package's compiled
code, so that a change to any helper invalidates every cached kernel (normcore_numba._fingerprint)."""

from __future__ import annotations

import shutil

import pytest

pytest.importorskip("numba")

from normcore_numba import _fingerprint  # noqa: E402


@pytest.mark.parametrize("name", _fingerprint.CARRIERS)
def test_each_module_with_cached_kernels_carries_the_current_fingerprint(name):
    assert _fingerprint.stated(name) == _fingerprint.compute(), (
        f"{name}: CODE_SHA256 is stale; run `python -m normcore_numba._fingerprint` (a change to the "
        "compiled code must reach numba's disk cache, see normcore_numba/_fingerprint.py)")


def test_a_change_to_a_helper_changes_every_carrier(tmp_path):
    for name in _fingerprint.SOURCES:
        shutil.copy(_fingerprint.ROOT / name, tmp_path / name)
    before = _fingerprint.compute(tmp_path)
    with open(tmp_path / "_simd.py", "a", encoding="utf-8") as fh:
        fh.write("\n# a helper changed\n")
    assert _fingerprint.compute(tmp_path) != before
    assert sorted(_fingerprint.write(tmp_path)) == sorted(_fingerprint.CARRIERS)
    for name in _fingerprint.CARRIERS:
        assert _fingerprint.stated(name, tmp_path) == _fingerprint.compute(tmp_path)
    assert _fingerprint.write(tmp_path) == []  # the lines themselves do not enter the digest
