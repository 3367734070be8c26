"""``parallel_blocks(body, nblk, args)``: run ``body(b, args)`` for b in range(nblk) on numba's
threads, from a serial kernel, with the body compiled once into the kernel.

Why not a ``prange`` loop in the kernel itself: numba compiles a prange body into a parallel
function of its own and optimizes and emits its machine code four times over (the body's
library, two wrapper libraries and the kernel, each linking the one before), and the kernel's
code around the loop goes through the parfor passes too. That was about half of a cold-cache
first call: BatchNorm2d forward + backward compiled in 3.7-3.9 s as prange kernels, 2.5-2.9 s
this way. Here the body is compiled as a subroutine of the kernel (its helpers inlined; its code
optimized and emitted twice: on its own, then in the kernel's module), and reached through its
address from one shared prange loop (``_run_blocks``: a fixed signature of three integers, so it
compiles once per cache for every kernel). The arguments travel as a tuple in the kernel's stack
frame, read by each block.

A block does exactly what the prange body did (the same operations in the same order), so
results are unchanged. One block runs on the calling thread with no parallel region (a region
costs ~2 us to start): that is how small inputs run.

Bodies must be ``inline="always"`` njit functions of ``(b, args)`` (args: a tuple); they write
only their own block's outputs (no shared writes across blocks), return nothing and raise
nothing (an exception in a block is not propagated: the kernels' error model is numpy's).
"""

from __future__ import annotations

import hashlib

from numba import njit, prange
from numba.core import cgutils, compiler, errors, types
from numba.core.typing import signature
from numba.extending import intrinsic

from ._common import KERNEL

#: The fingerprint of the package's compiled code (see _fingerprint): in this file, so
#: that numba's disk cache drops these kernels whenever any of that code changes.
CODE_SHA256 = "6adc431478b936b911208132f5a59a11b8b1334d36670d322a76640b09a89b74"

_ENTRY_SIG = signature(types.none, types.intp, types.intp)


def _entry_type(context):
    """The LLVM type of a block entry ``(b: intp, argp: intp) -> none`` (numba's convention)."""
    return context.call_conv.get_function_type(types.none, (types.intp, types.intp))


@intrinsic
def _call_block(typingctx, fn, b, argp):
    """Call the block entry at address ``fn`` for block ``b`` with the argument tuple at
    ``argp``."""
    if not all(isinstance(t, types.Integer) for t in (fn, b, argp)):
        raise errors.TypingError("_call_block: expected three integers")

    def codegen(context, builder, sig, args):
        ptr = builder.inttoptr(args[0], _entry_type(context).as_pointer())
        vals = [context.cast(builder, v, t, types.intp) for v, t in zip(args[1:], sig.args[1:], strict=True)]
        context.call_conv.call_function(builder, ptr, types.none, _ENTRY_SIG.args, vals)
        return context.get_dummy_value()

    return types.none(fn, b, argp), codegen


@njit(**KERNEL)
def _run_blocks(fn, nblk, argp):
    """The one prange loop: block entry ``fn`` for each block, spread over numba's threads."""
    for b in prange(nblk):
        _call_block(fn, b, argp)


_loaders: dict[types.Type, object] = {}


def _loader(tuple_ty: types.Type):
    """An intrinsic reading the ``tuple_ty`` tuple stored at an address."""
    load = _loaders.get(tuple_ty)
    if load is None:

        @intrinsic
        def load(typingctx, argp):
            def codegen(context, builder, sig, args):
                ptr = builder.inttoptr(args[0], context.get_value_type(tuple_ty).as_pointer())
                value = builder.load(ptr)
                context.nrt.incref(builder, tuple_ty, value)  # a new reference, as numba expects
                return value

            return tuple_ty(argp), codegen

        _loaders[tuple_ty] = load
    return load


_entries: dict[tuple[object, types.Type], object] = {}


def _entry_impl(body, tuple_ty: types.Type):
    """The Python function compiled as the block entry of ``body`` for ``tuple_ty`` arguments
    (one object per pair: numba keeps a subroutine per function object and closure).

    Its name says which pair it serves, the same in every process: numba names the machine code
    after the function's qualified name and argument types (two integers for every entry) plus
    a per-process counter, and links a kernel's subroutines as "any definition of this name is
    as good" (linkonce_odr). Entries of one name loaded from the disk cache by different
    kernels were taken for each other (a crash: the wrong body read the wrong tuple)."""
    key = (body, tuple_ty)
    impl = _entries.get(key)
    if impl is None:
        load = _loader(tuple_ty)

        def entry(b, argp):
            body(b, load(argp))

        f = body.py_func
        tag = hashlib.sha1(f"{f.__module__}.{f.__qualname__}:{tuple_ty}".encode()).hexdigest()
        entry.__name__ = entry.__qualname__ = f"{f.__name__}_entry_{tag[:16]}"
        impl = _entries[key] = entry
    return impl


def _flags() -> compiler.Flags:
    """The kernels' options (see _common.KERNEL) for a subroutine: numpy's error model, NRT."""
    flags = compiler.Flags()
    flags.nrt = True
    flags.error_model = "numpy"
    return flags


@intrinsic
def _block_entry(typingctx, body, args):
    """(address of body's block entry, address of a copy of ``args`` in this frame)."""
    if not isinstance(body, types.Dispatcher) or not isinstance(args, types.BaseTuple):
        raise errors.TypingError(f"parallel_blocks: expected a jit function and a tuple, got "
                                 f"{body}, {args}")

    def codegen(context, builder, sig, llargs):
        impl = _entry_impl(body.dispatcher, args)
        cres = context.compile_subroutine(builder, impl, _ENTRY_SIG, flags=_flags())
        fn = cgutils.get_or_insert_function(builder.module, _entry_type(context),
                                            cres.fndesc.llvm_func_name)
        slot = cgutils.alloca_once(builder, context.get_value_type(args))
        builder.store(llargs[1], slot)
        intp = context.get_value_type(types.intp)
        pair = (builder.ptrtoint(fn, intp), builder.ptrtoint(slot, intp))
        return context.make_tuple(builder, sig.return_type, pair)

    return types.UniTuple(types.intp, 2)(body, args), codegen


@intrinsic
def _keep_alive(typingctx, value):
    """Nothing: a use of ``value`` after the blocks ran. numba releases a variable after its
    last use, and the blocks read args through a raw address: without this use an array made
    for them (the scale and shift rows, say) was freed before the blocks read it."""

    def codegen(context, builder, sig, args):
        return context.get_dummy_value()

    return types.none(value), codegen


@njit(inline="always")
def parallel_blocks(body, nblk, args):
    """``body(b, args)`` for b in range(nblk): on numba's threads, or on the calling thread when
    nblk is 1."""
    fn, argp = _block_entry(body, args)
    if nblk == 1:
        _call_block(fn, 0, argp)
    else:
        _run_blocks(fn, nblk, argp)
    _keep_alive(args)
