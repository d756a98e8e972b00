"""Op registration, launch and input-check helpers shared by the Triton op wrappers.

The registered ops are public (``torch.ops.scoreops.triton_*``), so each wrapper checks its
arguments here rather than trusting ``scoreops.ops`` to have done it. Checks look only at
shapes, dtypes and devices, so they also run on fake tensors under ``torch.compile``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch._subclasses.fake_tensor import is_fake
from triton.language.extra import libdevice


INTERPRETED: bool = triton.knobs.runtime.interpret
"""True when ``triton.jit`` makes interpreted kernels (``TRITON_INTERPRET=1``), which run on CPU tensors."""
_INTERPRETED = tl.constexpr(INTERPRETED)

UINT32_MASK = 0xFFFFFFFF
# Pair (sample, group) and flat program indices are int32 inside the kernels.
MAX_INDEX = 2**31 - 2**16
# The interpreter runs one program at a time in numpy, so there big blocks amortise its per-op cost.
BLOCK_PAIRS = 4096 if INTERPRETED else 256
BLOCK_ELEMENTS = 16384 if INTERPRETED else 1024


@triton.jit
def round_to(value, dtype: tl.constexpr):
    """float32 ``value`` rounded to the nearest ``dtype`` value (ties to even), as torch's ``.to`` does.

    Triton's interpreter casts float32 to bfloat16 by truncation, so there the bits are rounded here.
    """
    if _INTERPRETED:
        if dtype == tl.bfloat16:
            bits = value.to(tl.uint32, bitcast=True)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
            bits = tl.where(value != value, 0x7FC0, bits)  # the carry could turn a NaN into inf
            return bits.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    return value.to(dtype)


@triton.jit
def mul(a, b):
    """``a * b`` rounded on its own, never contracted with a following add into one FMA.

    Compiled Triton contracts ``a * b + c`` by default; the torch reference, the C++ kernels
    (-ffp-contract=off) and the CUDA kernels (-fmad=false) round the product first, so plain
    ``*`` would move results by an ulp. ``mul.rn`` is never contracted. The interpreter never
    contracts and has no libdevice. (``mul_rn`` is in CUDA's libdevice only: the Triton
    backend targets NVIDIA GPUs.)
    """
    if _INTERPRETED:
        return a * b
    return libdevice.mul_rn(a, b)


def triton_op(name: str, *, mutates_args):
    """Register ``fn`` as the op ``name`` (schema from its annotations).

    Compiled kernels: :func:`torch.library.triton_op`, so that ``torch.compile`` and CUDA graphs
    see the kernels themselves. Interpreted kernels cannot be traced by torch, so there the op is
    an opaque :func:`torch.library.custom_op` whose fake implementation is ``fn`` itself, with
    the launches skipped (see :func:`wrap_triton`).
    """
    def register(fn):
        if not INTERPRETED:
            return torch.library.triton_op(name, fn, mutates_args=mutates_args)
        op = torch.library.custom_op(name, fn, mutates_args=mutates_args)
        op.register_fake(fn)
        return op
    return register


def wrap_triton(kernel):
    """:func:`torch.library.wrap_triton`, or in the interpreter a launcher that ignores fake tensors.

    It keeps torch's name on purpose: ``triton_op`` finds an op's kernels (for the compile cache
    key) by parsing the calls ``wrap_triton(<kernel>)`` in the op's source.
    """
    if not INTERPRETED:
        return _OnTensorDevice(torch.library.wrap_triton(kernel))
    return _InterpretedLauncher(kernel)


class _OnTensorDevice:
    """``launcher[grid](*args)`` launched on the device of the first tensor argument.

    Triton launches on the current CUDA device, which need not be the tensors' (``cuda:1``
    data while ``cuda:0`` is current); the CUDA kernels switch with a device guard, as here.
    """

    def __init__(self, launcher):
        self.launcher = launcher

    def __getitem__(self, grid):
        launch = self.launcher[grid]

        def on_device(*args, **kwargs):
            t = next(a for a in args if isinstance(a, torch.Tensor))
            if t.device.type != "cuda" or is_fake(t) or t.device.index == torch.cuda.current_device():
                return launch(*args, **kwargs)
            with torch.cuda.device(t.device):
                return launch(*args, **kwargs)
        return on_device


class _InterpretedLauncher:
    """``launcher[grid](*args)`` runs the interpreted kernel, unless the tensors are fake (shapes only)."""

    def __init__(self, kernel):
        self.kernel = kernel

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            if not any(is_fake(a) for a in args if isinstance(a, torch.Tensor)):
                self.kernel[grid](*args, **kwargs)
        return launch


def check_device(name: str, t: torch.Tensor) -> None:
    """Triton kernels read CPU tensors only in the interpreter; say so instead of crashing in the launch."""
    if t.device.type == "cpu" and not INTERPRETED:
        raise RuntimeError(f"{name} is a CPU tensor, but the Triton kernels run on CPU tensors only in Triton's "
                           "interpreter: set TRITON_INTERPRET=1 before triton is imported, or use a GPU tensor")


def check_no_partial_overlap(name: str, out: torch.Tensor, t: torch.Tensor) -> None:
    """A kernel that reads contiguous ``t`` while writing ``out`` in place may share all of its
    memory (each element is read before it is written), but not part of it: other programs
    would read elements already written. The C++ ops refuse this case the same way."""
    if is_fake(out) or is_fake(t) or not t.is_contiguous():  # a strided t is read through a copy
        return
    if out.untyped_storage().data_ptr() != t.untyped_storage().data_ptr() or out.data_ptr() == t.data_ptr():
        return
    (out_start, out_end), (t_start, t_end) = (_byte_span(u) for u in (out, t))
    if t_start < out_end and out_start < t_end:
        raise RuntimeError(f"{name} partly overlaps the tensor written in place; pass a copy (clone()) of it")


def _byte_span(t: torch.Tensor) -> tuple[int, int]:
    """The addresses [start, end) of a contiguous tensor's elements."""
    return t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()


def check_counters(seed: torch.Tensor, step: torch.Tensor, device: torch.device) -> None:
    """``seed`` and ``step`` are 1-element int64 tensors on ``device`` (read by the kernels)."""
    for name, t in (("seed", seed), ("step", step)):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.int64 or t.numel() != 1:
            raise TypeError(f"{name} must be a 1-element int64 tensor, got "
                            f"{t.dtype if isinstance(t, torch.Tensor) else type(t).__name__}")
        if t.device != device:
            raise ValueError(f"{name} is on {t.device}, expected {device}")


def check_index_range(name: str, count: int) -> None:
    """The kernels index pairs and elements of one launch with int32."""
    if count > MAX_INDEX:
        raise ValueError(f"{name} is too large for one Triton launch: {count} > {MAX_INDEX}")


def sample_groups(x: torch.Tensor) -> tuple[int, int, int]:
    """Of a non-empty (B, ...) x: the elements per sample, its groups of 4 (one Philox call each),
    and the (sample, group) pairs a kernel covers; checked against the index range."""
    numel = x.numel() // x.shape[0]
    groups = triton.cdiv(numel, 4)
    pairs = x.shape[0] * groups
    check_index_range("elements per sample", numel)
    check_index_range("batch * ceil(numel / 4)", pairs)
    return numel, groups, pairs


def block_size(count: int, max_block: int) -> int:
    """A power-of-two block no larger than needed for ``count`` items (small launches waste no lanes)."""
    return min(max_block, triton.next_power_of_2(max(count, 1)))
