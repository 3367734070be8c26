"""One layer shared by several threads: each thread's backward uses its own forward's context,
and no running-statistics update or gradient accumulation is lost (issue #29)."""

from __future__ import annotations

import threading

import numpy as np

import normcore


def _run(n_threads, body):
    errors = []

    def wrap(i):
        try:
            body(i)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=wrap, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors


def test_concurrent_training_forwards_lose_no_update(backend):
    x = np.random.default_rng(0).normal(2.0, 3.0, size=(8, 4, 6, 6)).astype(np.float32)
    shared = normcore.BatchNorm2d(4, backend=backend)
    shared(x)  # compile and warm up outside the threads
    serial = normcore.BatchNorm2d(4, backend=backend)
    serial(x)
    start = threading.Barrier(4)

    def body(i):
        start.wait()
        for _ in range(25):
            shared(x)

    _run(4, body)
    for _ in range(100):
        serial(x)
    assert int(shared.num_batches_tracked) == 101
    np.testing.assert_allclose(normcore.to_numpy(shared.running_mean),
                               normcore.to_numpy(serial.running_mean), rtol=1e-6)
    np.testing.assert_allclose(normcore.to_numpy(shared.running_var),
                               normcore.to_numpy(serial.running_var), rtol=1e-6)


def test_each_thread_gets_its_own_gradient(backend):
    """Forward in thread A, forward in thread B, then both backwards: each dx is its own."""
    rng = np.random.default_rng(1)
    xs = [rng.normal(size=(16, 32)).astype(np.float32) for _ in range(2)]
    dys = [rng.normal(size=(16, 32)).astype(np.float32) for _ in range(2)]
    want = []
    for x, dy in zip(xs, dys, strict=True):
        ref = normcore.LayerNorm(32, backend=backend)
        ref(x)
        want.append(normcore.to_numpy(ref.backward(dy)))
    ln = normcore.LayerNorm(32, backend=backend)
    got = [None, None]
    forwards_done, first_backward_done = threading.Barrier(2), threading.Event()

    def body(i):
        ln(xs[i])
        forwards_done.wait()  # both forwards ran before either backward
        if i == 1:
            first_backward_done.wait(30)
        got[i] = normcore.to_numpy(ln.backward(dys[i]))
        if i == 0:
            first_backward_done.set()

    for _ in range(5):
        first_backward_done.clear()
        _run(2, body)
        for i in range(2):
            np.testing.assert_array_equal(got[i], want[i])
    ln.weight.grad = None


def test_concurrent_backwards_accumulate_every_gradient(backend):
    x = np.random.default_rng(2).normal(size=(8, 16)).astype(np.float32)
    dy = np.ones_like(x)
    ln = normcore.LayerNorm(16, backend=backend)
    ln(x)
    one = normcore.to_numpy(ln.backward(dy)) * 0 + normcore.to_numpy(ln.bias.grad)
    ln.zero_grad()

    def body(i):
        for _ in range(20):
            ln(x)
            ln.backward(dy)

    _run(4, body)
    np.testing.assert_allclose(normcore.to_numpy(ln.bias.grad), 80 * one[0], rtol=1e-6)
