"""One fingerprint of the package's compiled code, written into every module that numba caches
kernels of, so that the disk cache never serves a kernel compiled from older code.

Why: numba keys a cached function on the content of its own source file (a sha256 of the
file), not on the modules whose code it compiles in. The kernels of ``_channel``, ``_group``,
``_rows`` and ``_dropout`` inline the helpers of ``_common``, ``_blocks``, ``_simd``, ``_vmap``
and ``_columns``; a change to a helper alone left every cached kernel valid, in ``__pycache__``
or ``NUMBA_CACHE_DIR`` (neither is removed by ``pip install -U``), and processes kept running
the old code. So each module with cached functions (``CARRIERS``) holds a ``CODE_SHA256`` line:
the sha256 of all the modules that make up the compiled code (``SOURCES``), read with their own
``CODE_SHA256`` lines blanked. Any change to any of them changes the line in every carrier, and
numba then recompiles every kernel on first use (a cold first call, about 2.5 s per layer).

``python -m normcore_numba._fingerprint`` rewrites the lines; the test suite fails while they are
stale (tests/test_numba_fingerprint.py).
"""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
SOURCES = ("_blocks.py", "_channel.py", "_columns.py", "_common.py", "_dropout.py", "_group.py",
           "_rows.py", "_simd.py", "_vmap.py")
CARRIERS = ("_blocks.py", "_channel.py", "_common.py", "_dropout.py", "_group.py", "_rows.py")
_LINE = re.compile(r'^CODE_SHA256 = "[0-9a-f]*"$', re.MULTILINE)


def compute(root: Path = ROOT) -> str:
    """sha256 of the SOURCES, each read with its CODE_SHA256 line blanked."""
    h = hashlib.sha256()
    for name in SOURCES:
        text = _LINE.sub('CODE_SHA256 = ""', (root / name).read_text(encoding="utf-8"))
        h.update(name.encode() + b"\0" + text.encode("utf-8") + b"\0")
    return h.hexdigest()


def stated(name: str, root: Path = ROOT) -> str | None:
    """The CODE_SHA256 that carrier ``name`` holds (None without the line)."""
    m = _LINE.search((root / name).read_text(encoding="utf-8"))
    return None if m is None else m.group(0).split('"')[1]


def write(root: Path = ROOT) -> list[str]:
    """Bring every carrier's line up to date; return the names rewritten."""
    digest = compute(root)
    changed = []
    for name in CARRIERS:
        path = root / name
        text = path.read_text(encoding="utf-8")
        new = _LINE.sub(f'CODE_SHA256 = "{digest}"', text)
        if new != text:
            path.write_text(new, encoding="utf-8")
            changed.append(name)
    return changed


if __name__ == "__main__":  # pragma: no cover - a maintainer's command
    names = write()
    sys.stdout.write(f"CODE_SHA256 {compute()}: rewrote {', '.join(names) or 'nothing'}\n")
