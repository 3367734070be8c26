"""Quick self-check of every kernel of the numba-cuda backend against the NumPy reference.

Run (no GPU needed)::

    NUMBA_ENABLE_CUDASIM=1 python -m normcore_cuda._selfcheck

Small shapes only: the simulator runs every CUDA thread as a Python thread. Exits non-zero on a
mismatch. On a real GPU it runs the same checks on the device. With
``NORMCORE_CUDASIM_SHUFFLE=1`` the simulator runs the GPU warp-shuffle reduction code itself on an
emulated ``shfl_xor_sync`` (about twice as slow) instead of the fast emulation of the reduction.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from normcore.backend import dropout_keep_mask

TOL = {np.float64: 1e-10, np.float32: 2e-4, np.float16: 3e-3}
DTYPES = (np.float64, np.float32, np.float16)

_failures: list[str] = []
_count = 0


def _close(name, got, want, dtype, scale=None):
    global _count
    _count += 1
    got = np.asarray(got)
    want = np.asarray(want)
    if got.shape != want.shape or got.dtype != want.dtype:
        _failures.append(
            f"{name}: shape/dtype {got.shape} {got.dtype} vs {want.shape} {want.dtype}")
        return
    g, w = got.astype(np.float64), want.astype(np.float64)
    ref = np.max(np.abs(w)) if scale is None else scale
    err = np.max(np.abs(g - w)) / max(ref, 1e-30) if w.size else 0.0
    if not np.isfinite(err) or err > TOL[dtype]:
        _failures.append(f"{name}: rel err {err:.3g} > {TOL[dtype]}")


def _gscale(want, dy):
    """Error scale of a gradient: its own size, but not below 5 % of |dy| (dx of tiny rows is
    pure cancellation, e.g. M = 2, where float16 rounding of the inputs dominates)."""
    return max(float(np.max(np.abs(np.asarray(want, np.float64)))),
               0.05 * float(np.max(np.abs(np.asarray(dy, np.float64)))))


def _noncontig(a: np.ndarray) -> np.ndarray:
    """The same values as ``a`` in a non-contiguous (strided) array."""
    big = np.empty(a.shape + (2,), dtype=a.dtype)
    big[..., 0] = a
    return big[..., 0]


def main() -> int:
    from normcore_cuda.backend import CudaBackend
    from normcore_numpy.backend import NumpyBackend

    ref = NumpyBackend()
    be = CudaBackend()
    av = be.is_available()
    print(f"backend {be.name}: available={bool(av)} {av.reason} version={be.version()}")
    if av and getattr(be._k, "SIM_SHUFFLE", False):
        print("simulator: GPU shuffle reductions on an emulated shfl_xor_sync")
    if not av:
        return 1
    rng = np.random.default_rng(0)
    if getattr(be._k, "SIMULATOR", False):
        sys.setswitchinterval(5e-4)  # the simulator's block manager polls its threads
    t0 = time.perf_counter()

    def dev(a):
        return be.asarray(a)

    def host(a):
        return be.to_numpy(a)

    for dt in DTYPES:
        sd = np.float64 if dt == np.float64 else np.float32
        # ---------------------------------------------------------- channel view
        for ci, shape in enumerate([(1, 1, 1), (3, 5, 7), (3, 3, 1), (4, 2, 37)]):
            for nc in (ci % 2 == 1,):
                x = (rng.standard_normal(shape) * 2 + 3).astype(dt)
                dy = rng.standard_normal(shape).astype(dt)
                xs = _noncontig(x) if nc else x
                tag = f"{dt.__name__}{shape}{' nc' if nc else ''}"
                m, v = be.channel_moments(dev(xs))
                rm, rv = ref.channel_moments(x)
                _close(f"channel_moments mean {tag}", host(m), rm, dt, scale=3)
                _close(f"channel_moments var {tag}", host(v), rv, dt, scale=4)
                c = shape[1]
                for with_w in (False, True):
                    w = rng.standard_normal(c).astype(sd) if with_w else None
                    b = rng.standard_normal(c).astype(dt) if with_w else None
                    y = be.channel_normalize(dev(xs), dev(rm), dev(rv), 1e-5,
                                             None if w is None else dev(w),
                                             None if b is None else dev(b))
                    _close(f"channel_normalize {tag} w={with_w}", host(y),
                           ref.channel_normalize(x, rm, rv, 1e-5, w, b), dt)
                    for bs in (True, False):
                        got = be.channel_normalize_backward(
                            dev(dy), dev(xs), dev(rm), dev(rv), 1e-5,
                            None if w is None else dev(w), bs)
                        want = ref.channel_normalize_backward(dy, x, rm, rv, 1e-5, w, bs)
                        for nm, gg, ww in zip(("dx", "dw", "db"), got, want, strict=True):
                            _close(f"channel_backward {nm} {tag} w={with_w} bs={bs}",
                                   host(gg), ww, dt, scale=_gscale(ww, dy))
        # running update
        rmean = rng.standard_normal(5).astype(sd)
        rvar = rng.random(5).astype(sd)
        bm = rng.standard_normal((3, 5)).astype(sd)
        bv = rng.random((3, 5)).astype(sd)
        got = be.running_update(dev(rmean), dev(rvar), dev(bm), dev(bv), 0.1, 1.25)
        want = ref.running_update(rmean, rvar, bm, bv, 0.1, 1.25)
        _close(f"running_update mean {dt.__name__}", host(got[0]), want[0], sd)
        _close(f"running_update var {dt.__name__}", host(got[1]), want[1], sd)

        # ---------------------------------------------------------- group view
        shapes = [(1, 1, 1, 1), (3, 1, 7, 1), (2, 1, 200, 1), (2, 3, 2, 5), (1, 2, 3, 41),
                  (5, 1, 13, 1)]
        for si, shape in enumerate(shapes):
            for nc in (si % 2 == 1,):
                x = (rng.standard_normal(shape) + 1).astype(dt)
                dy = rng.standard_normal(shape).astype(dt)
                xs = _noncontig(x) if nc else x
                gshape = shape[1:3]
                for center in (True, False):
                    for with_w in (False, True):
                        w = rng.standard_normal(gshape).astype(sd) if with_w else None
                        b = rng.standard_normal(gshape).astype(sd) if with_w else None
                        tag = (f"{dt.__name__}{shape}{' nc' if nc else ''} c={center} "
                               f"w={with_w}")
                        got = be.group_normalize(dev(xs), None if w is None else dev(w),
                                                 None if b is None else dev(b), 1e-5, center)
                        want = ref.group_normalize(x, w, b, 1e-5, center)
                        for nm, gg, ww in zip(("y", "mean", "var"), got, want, strict=True):
                            _close(f"group_normalize {nm} {tag}", host(gg), ww, dt, scale=(
                                None if nm == "y" else 2))
                        mean, var = want[1], want[2]
                        got = be.group_normalize_backward(
                            dev(dy), dev(xs), dev(mean), dev(var), 1e-5,
                            None if w is None else dev(w), center)
                        want = ref.group_normalize_backward(dy, x, mean, var, 1e-5, w, center)
                        for nm, gg, ww in zip(("dx", "dw", "db"), got, want, strict=True):
                            _close(f"group_backward {nm} {tag}", host(gg), ww, dt,
                                   scale=_gscale(ww, dy))
        # float32 accumulation safety: mean 1e4, std 1
        if dt == np.float32:
            x = (rng.standard_normal((2, 1, 300, 1)) + 1e4).astype(dt)
            _, _, v = be.group_normalize(dev(x), None, None, 1e-5, True)
            _, _, rv = ref.group_normalize(x, None, None, 1e-5, True)
            _close("group var offset 1e4", host(v), rv, dt, scale=1e3)
            x3 = (rng.standard_normal((3, 2, 50)) + 1e4).astype(dt)
            _close("channel var offset 1e4", host(be.channel_moments(dev(x3))[1]),
                   ref.channel_moments(x3)[1], dt, scale=1e3)

        # ---------------------------------------------------------- row view
        for ri, shape in enumerate([(1, 1), (3, 7), (2, 130), (5, 2)]):
            for nc in (ri % 2 == 1,):
                x = rng.standard_normal(shape).astype(dt)
                dy = rng.standard_normal(shape).astype(dt)
                xs = _noncontig(x) if nc else x
                for ddof in (0, 1):
                    if shape[1] - ddof <= 0:
                        continue
                    for eir in (True, False):
                        tag = f"{dt.__name__}{shape}{' nc' if nc else ''} ddof={ddof} eir={eir}"
                        got = be.standardize_rows(dev(xs), 1e-5, ddof, eir)
                        want = ref.standardize_rows(x, 1e-5, ddof, eir)
                        for nm, gg, ww in zip(("y", "mean", "denom"), got, want, strict=True):
                            _close(f"standardize_rows {nm} {tag}", host(gg), ww, dt,
                                   scale=None if nm == "y" else 1)
                        gdx = be.standardize_rows_backward(dev(dy), dev(xs), dev(want[1]),
                                                           dev(want[2]), 1e-5, ddof, eir)
                        wdx = ref.standardize_rows_backward(dy, x, want[1], want[2], 1e-5,
                                                            ddof, eir)
                        _close(f"standardize_rows_backward {tag}", host(gdx), wdx, dt,
                               scale=_gscale(wdx, dy))

        # ---------------------------------------------------------- dropout
        for shape, p, seed in [((1,), 0.5, 0), ((7, 13), 0.3, 12345), ((4, 5), 0.0, 7),
                               ((4, 5), 1.0, 7), ((3, 50), 0.9, 2**63 - 1)]:
            for nc in (False, True):
                x = rng.standard_normal(shape).astype(dt)
                xs = _noncontig(x) if nc else x
                y = host(be.dropout(dev(xs), p, seed))
                _close(f"dropout {dt.__name__}{shape} p={p}", y, ref.dropout(x, p, seed), dt)
                global _count
                _count += 1
                keep = dropout_keep_mask(shape, p, seed)
                if p < 1 and not np.array_equal(y != 0, keep & (x != 0)):
                    _failures.append(f"dropout mask {dt.__name__}{shape} p={p} seed={seed}")

    dt_s = time.perf_counter() - t0
    for f in _failures:
        print("FAIL", f)
    print(f"{_count - len(_failures)}/{_count} checks passed in {dt_s:.1f} s")
    return 1 if _failures else 0


if __name__ == "__main__":
    sys.exit(main())
