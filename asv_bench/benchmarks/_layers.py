"""Base classes of the per-layer benchmarks: one time/bandwidth class and one peak-memory class per
layer, both parametrized over (backend, shape, dtype).

A subclass names the layer (``layer_name``), its realistic and quick shapes, and how to build it
(``build``); everything else is shared. See ``_common`` for the grid and the skipping rules.
"""

from __future__ import annotations

from typing import Any

from ._common import (
    BACKENDS,
    DTYPES,
    arm_backward,
    best_time,
    check_case,
    get_backend,
    layer_class,
    make_sync,
    random,
    shapes,
    skip,
)

GB = 1e9

# (class name, backend, shape, dtype) -> _State; one process usually holds a single case.
_STATE: dict[tuple[Any, ...], _State] = {}


class _State:
    """Everything a timed call touches, built once per process."""

    def __init__(self, bench: _LayerBench, backend_name: str, shape: tuple[int, ...], dtype: str):
        be = get_backend(backend_name)
        self.backend = be
        self.sync = make_sync(be)
        host_x = random(shape, dtype, seed=0)
        host_dy = random(shape, dtype, seed=1)
        self.x = bench.layout(be.asarray(host_x))
        self.dy = bench.layout(be.asarray(host_dy))
        self.nbytes = host_x.nbytes
        del host_x, host_dy
        self.layer = bench.build(be, shape, dtype)
        self.layer_eval = bench.build(be, shape, dtype) if bench.has_eval else None
        if self.layer_eval is not None:
            self.layer_eval.eval()
        # JIT compilation and GPU warm-up, twice (the second call runs with everything loaded).
        for _ in range(2):
            self.saved = bench.forward(self)
            bench.backward(self)
            if self.layer_eval is not None:
                self.layer_eval(self.x)
            self.sync()
        self.saved = bench.forward(self)
        self.sync()


class _LayerBench:
    """Forward (training mode), backward, evaluation-mode forward and achieved bandwidth."""

    #: normcore attribute of the layer (skipped at commits that lack it).
    layer_name = ""
    full_shapes: list[tuple[int, ...]] = []
    quick_shapes: list[tuple[int, ...]] = []
    #: whether to build an evaluation-mode copy (``_ModuleBench`` times it)
    has_eval = False
    param_names = ["backend", "shape", "dtype"]
    timeout = 300

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.params = [list(BACKENDS), shapes(cls.full_shapes, cls.quick_shapes), list(DTYPES)]

    # ---------------------------------------------------------------- per-layer hooks
    def build(self, backend: Any, shape: tuple[int, ...], dtype: str) -> Any:
        """A new layer for input ``shape`` on ``backend``."""
        raise NotImplementedError

    def layout(self, a: Any) -> Any:
        """The input and gradient as the layer gets them (the array as made, by default)."""
        return a

    def forward(self, st: _State) -> Any:
        """Run the training-mode forward; return what backward needs (the module's saved state)."""
        st.layer(st.x)
        return st.layer._saved

    def backward(self, st: _State) -> Any:
        arm_backward(st.layer, st.saved)
        return st.layer.backward(st.dy)

    def run_backward(self) -> Any:
        """The timed backward: ``setup`` has just put the forward state back."""
        return self.st.layer.backward(self.st.dy)

    # ---------------------------------------------------------------- asv hooks
    def setup(self, backend: str, shape: tuple[int, ...], dtype: str) -> None:
        check_case(shape, dtype, self.quick_shapes)
        layer_class(self.layer_name)
        key = (type(self).__name__, backend, tuple(shape), dtype)
        st = _STATE.get(key)
        if st is None:
            st = _STATE[key] = _State(self, backend, tuple(shape), dtype)
        self.st = st
        self._arm()  # backward consumes the forward state: put it back before every call

    def _arm(self) -> None:
        arm_backward(self.st.layer, self.st.saved)

    def time_forward(self, backend: str, shape: tuple[int, ...], dtype: str) -> None:
        self.forward(self.st)
        self.st.sync()

    def time_backward(self, backend: str, shape: tuple[int, ...], dtype: str) -> None:
        self.run_backward()
        self.st.sync()

    def track_forward_s_per_gb(self, backend: str, shape: tuple[int, ...], dtype: str) -> float:
        """Seconds per GB of the forward's minimal memory traffic (read x, write y): the inverse
        of the achieved bandwidth, so lower is better like every other benchmark here."""
        st = self.st
        t = best_time(lambda: self.forward(st), st.sync)
        return t / (2 * st.nbytes / GB)

    track_forward_s_per_gb.unit = "s/GB"

    def track_backward_s_per_gb(self, backend: str, shape: tuple[int, ...], dtype: str) -> float:
        """Seconds per GB of the backward's minimal traffic (read dy and x, write dx)."""
        st = self.st

        def step() -> None:
            self._arm()
            self.run_backward()

        t = best_time(step, st.sync)
        return t / (3 * st.nbytes / GB)

    track_backward_s_per_gb.unit = "s/GB"


class _ModuleBench(_LayerBench):
    """A layer module: adds the evaluation-mode forward (running statistics, no saved state)."""

    has_eval = True

    def time_forward_eval(self, backend: str, shape: tuple[int, ...], dtype: str) -> None:
        self.st.layer_eval(self.st.x)
        self.st.sync()


class _MemoryBench:
    """Peak resident memory of one forward and of one training step (forward + backward) on the
    CPU backends, next to ``peakmem_reference``: the same process holding the same inputs that
    only copies x once. The difference is what the layer needs beyond its output.

    The kernels are compiled on a tiny input of the same dtype and rank in ``setup`` so that the
    peak is not a warm-up forward on the large input (asv reports the process's maximum RSS).
    """

    layer_name = ""
    full_shapes: list[tuple[int, ...]] = []
    quick_shapes: list[tuple[int, ...]] = []
    param_names = ["backend", "shape", "dtype"]
    timeout = 300

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.params = [list(BACKENDS), shapes(cls.full_shapes, cls.quick_shapes), list(DTYPES)]

    def build(self, backend: Any, shape: tuple[int, ...], dtype: str) -> Any:
        """A new layer for input ``shape`` on ``backend``."""
        raise NotImplementedError

    def tiny(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """A small input of the same rank (and feature sizes) that compiles the same kernels."""
        if len(shape) <= 2:
            return (2,) + tuple(shape[1:])
        return (2, shape[1]) + (2,) * (len(shape) - 2)

    def step(self, layer: Any, x: Any, dy: Any) -> Any:
        layer(x)
        return layer.backward(dy)

    def setup(self, backend: str, shape: tuple[int, ...], dtype: str) -> None:
        check_case(shape, dtype, self.quick_shapes)
        layer_class(self.layer_name)
        be = get_backend(backend)
        if getattr(be, "device", "cpu") != "cpu":
            skip("peak host memory is measured for CPU backends only")
        small = self.tiny(tuple(shape))
        warm = self.build(be, tuple(shape), dtype)
        xs = random(small, dtype)
        self.step(warm, xs, xs)  # compiles forward and backward kernels for this dtype and rank
        self.module = self.build(be, tuple(shape), dtype)
        self.x = random(shape, dtype, seed=0)
        self.dy = random(shape, dtype, seed=1)

    def peakmem_reference(self, backend: str, shape: tuple[int, ...], dtype: str) -> None:
        self.x.copy()

    def peakmem_forward(self, backend: str, shape: tuple[int, ...], dtype: str) -> None:
        self.module(self.x)

    def peakmem_train_step(self, backend: str, shape: tuple[int, ...], dtype: str) -> None:
        self.step(self.module, self.x, self.dy)
