"""Fused step ops and backend dispatch: the one place in scoreops that knows about backends.

Backends:
    ``torch``   plain torch (:mod:`scoreops.torch_ops`), the reference; runs everywhere.
    ``cpu``     C++ kernels of ``scoreops._C`` (at::parallel_for, vectorised noise).
    ``cuda``    CUDA kernels of ``scoreops._C`` (current stream, CUDA-graph safe).
    ``triton``  Triton kernels of ``scoreops.kernels``; on CPU tensors only under ``TRITON_INTERPRET=1``.
    ``auto``    the fastest built backend for the tensor's device: cuda > triton > torch on a GPU,
                cpu > torch on the CPU (interpreted Triton is never picked).

All ops use the noise stream of :mod:`scoreops.noise`, so the same ``seed``/``step``/``lane``
give the same noise on every backend. ``seed`` and ``step`` may be Python ints or 1-element
int64 tensors on the data's device; tensors let a captured CUDA graph draw new noise per replay.
"""
from __future__ import annotations

import functools
import math
import numbers
import os
import warnings
from pathlib import Path
from typing import Sequence

import torch

from . import torch_ops
from .checks import check_choice, check_int, check_positive, coef_layout

BACKENDS = ("auto", "torch", "cpu", "cuda", "triton")
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Backends that read seed and step on the device; the torch backend reads them on the host,
# which a CUDA graph cannot capture.
GRAPH_SAFE_BACKENDS = ("cuda", "triton")


# --------------------------------------------------------------------------- backend discovery
@functools.lru_cache(maxsize=None)
def _load_cpp() -> str | None:
    """Import scoreops._C; returns None when loaded, else the reason it is missing."""
    try:
        from . import _C  # noqa: F401  (registers torch.ops.scoreops.*)
        from . import _fake  # noqa: F401
    except ImportError as e:  # a source checkout or a failed build
        package = Path(__file__).resolve().parent
        checkout = package.parent
        built = any(package.glob("_C*.so")) or any(package.glob("_C*.pyd"))
        if built or not ((checkout / "setup.py").is_file() and (checkout / "csrc").is_dir()):
            return str(e)  # a build that fails to load, or an installed package without one
        # Python puts the current folder first, so from the checkout's root the unbuilt sources
        # shadow the installed package: say so instead of quietly running without the kernels.
        reason = (f"imported from the source checkout {checkout}, which holds no build of it: the installed "
                  f"package is shadowed when Python starts in that folder; run from another folder, or build "
                  f"in place with `python setup.py build_ext --inplace`")
        warnings.warn(f"scoreops._C is not built ({reason}); until then the C++ and CUDA kernels are off")
        return reason
    return None


@functools.lru_cache(maxsize=None)
def _load_triton() -> str | None:
    """Import scoreops.kernels; returns None when it loaded and can run, else the reason."""
    try:
        from . import kernels  # noqa: F401  (registers torch.ops.scoreops.triton_*)
    except ImportError as e:
        return str(e)
    if triton_interpreted():
        return _interpreter_defect()
    return None


def _interpreter_defect() -> str | None:
    """Why Triton's interpreter cannot run the kernels with the installed packages, or None."""
    import numpy
    import triton

    def release(version: str) -> tuple[int, ...]:
        return tuple(int(part) for part in version.split(".")[:2])

    # Before 3.7 the interpreter turns 1-element arrays into loop bounds with int(), which NumPy
    # 2.4 refuses (triton-lang/triton#9171).
    if release(triton.__version__) < (3, 7) and release(numpy.__version__) >= (2, 4):
        return (f"the interpreter of Triton {triton.__version__} fails under NumPy {numpy.__version__} "
                "(triton-lang/triton#9171); use Triton >= 3.7 or NumPy < 2.4")
    return None


def triton_interpreted() -> bool:
    """True when Triton runs in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """The concrete backends that can run on ``device``, fastest first."""
    return list(_backends_for(torch.device(device).type))


@functools.lru_cache(maxsize=None)
def _backends_for(device_type: str) -> tuple[str, ...]:
    """Cached per device type: resolving a backend sits on every op call of a sampler loop."""
    device = torch.device(device_type)
    found = []
    if device.type == "cuda":
        if _load_cpp() is None and torch.ops.scoreops.built_with_cuda():
            found.append("cuda")
        if _load_triton() is None:
            found.append("triton")
    elif device.type == "cpu":
        if _load_cpp() is None:
            found.append("cpu")
        if triton_interpreted() and _load_triton() is None:
            found.append("triton")
    found.append("torch")
    return tuple(found)


def resolve_backend(backend: str, device: torch.device | str, inputs: Sequence = ()) -> str:
    """Map ``backend`` (possibly ``"auto"``) to a concrete backend for ``device``, or raise.

    Only the ``torch`` backend differentiates: when autograd would record the op (grad mode on
    and a tensor in ``inputs`` requiring grad), ``auto`` picks it and the kernel backends refuse.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in inputs):
        if backend not in ("auto", "torch"):
            raise ValueError(f"backend={backend!r} has no gradients, and an input requires grad: call it under "
                             f"torch.no_grad() (sampling), or use backend='torch' or 'auto' to differentiate")
        return "torch"
    device = torch.device(device)
    found = available_backends(device)
    if backend == "auto":
        # Interpreted Triton is a test vehicle, never the fast choice on the CPU.
        return next(b for b in found if not (b == "triton" and device.type == "cpu"))
    if backend not in found:
        why = {
            "cpu": f"scoreops._C is not built ({_load_cpp()})" if _load_cpp() else "it runs on CPU tensors only",
            "cuda": ("scoreops._C was built without CUDA kernels" if device.type == "cuda" else
                     "it runs on CUDA tensors only"),
            "triton": (f"triton is not importable ({_load_triton()})" if _load_triton() else
                       "on CPU tensors it needs TRITON_INTERPRET=1 set before scoreops is imported"),
        }[backend]
        raise RuntimeError(f"backend={backend!r} is not available for device {device}: {why}; "
                           f"available: {found}")
    return backend


def op(name: str, backend: str):
    """The raw implementation of op ``name`` for a concrete backend (no input checks)."""
    if backend == "torch":
        return getattr(torch_ops, name)
    if backend in ("cpu", "cuda"):
        return getattr(torch.ops.scoreops, name)
    if backend == "triton":
        return getattr(torch.ops.scoreops, "triton_" + name)
    raise ValueError(f"no concrete backend {backend!r}")


# --------------------------------------------------------------------------- input checks
def check_float(name: str, t, like: torch.Tensor | None = None) -> torch.Tensor:
    """Check that ``t`` is a floating tensor (fp32/fp16/bf16) matching ``like``'s shape/device/dtype.

    The Triton op wrappers check their inputs with this too. Only shapes, dtypes and devices are
    read, so it also runs on fake tensors under ``torch.compile``.
    """
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}")
    if like is not None:
        if t.device != like.device:
            raise ValueError(f"{name} is on {t.device}, expected {like.device}")
        if t.shape != like.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(like.shape)}")
        if t.dtype != like.dtype:
            raise TypeError(f"{name} has dtype {t.dtype}, expected {like.dtype}")
    return t


def as_coef(name: str, v, x: torch.Tensor) -> torch.Tensor:
    """A step coefficient as a float32 tensor on x's device: one value, one per sample
    (shape (B,) or (B, 1, ..., 1)) or one per element (x's shape)."""
    if isinstance(v, torch.Tensor):
        if v.dtype.is_complex or not v.dtype.is_floating_point:
            raise TypeError(f"{name} must be a real floating tensor or a float, got {v.dtype}")
        if v.device != x.device:
            raise ValueError(f"{name} is on {v.device} but x is on {x.device}")
        coef_layout(name, v.shape, x.shape)
        return v.to(torch.float32).contiguous()
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{name} must be a float or a tensor, got {type(v).__name__}")
    return torch.full((1,), float(v), dtype=torch.float32, device=x.device)


def canonical_device(device: torch.device | str) -> torch.device:
    """``device`` as its tensors report it: ``"cuda"`` gets the current index, ``"cpu:0"`` loses its."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu") if device.type == "cpu" else device


def as_counter(name: str, v, device: torch.device) -> torch.Tensor:
    """``seed``/``step`` as a 1-element int64 tensor on ``device``; an int counts modulo 2**64
    and must lie in [-2**63, 2**64)."""
    if isinstance(v, torch.Tensor):
        if v.dtype != torch.int64 or v.numel() != 1:
            raise TypeError(f"{name} must be an int or a 1-element int64 tensor, "
                            f"got {v.dtype} of shape {tuple(v.shape)}")
        # The plain comparison first: this runs twice per op call of a sampler loop.
        if v.device != device and canonical_device(v.device) != canonical_device(device):
            raise ValueError(f"{name} is on {v.device} but the data is on {device}")
        return v.reshape(1)
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be an int or a 1-element int64 tensor, got {type(v).__name__}")
    v = int(v)
    if not -(1 << 63) <= v < 1 << 64:
        raise ValueError(f"{name} must fit in 64 bits, [-2**63, 2**64), got {v}")
    v &= (1 << 64) - 1
    return torch.tensor([v - (1 << 64) if v >= 1 << 63 else v], dtype=torch.int64, device=device)


def _check_x(x) -> torch.Tensor:
    check_float("x", x)
    if x.dim() < 1:
        raise ValueError("x must have a leading batch dimension, got a 0-d tensor")
    return x


# --------------------------------------------------------------------------- public ops
def sde_step(x: torch.Tensor, score: torch.Tensor, a, b, c=0.0, *, seed, step, lane: int = 0,
             sample_offset: int = 0, add_noise: bool = True, inplace: bool = False,
             backend: str = "auto") -> torch.Tensor:
    """One fused SDE update ``x + a*score + b*z + c*(z*z - 1)``, z ~ N(0, I) from the stream.

    EM is ``a = g**2 dt, b = g sqrt(dt), c = 0``; Milstein adds ``c = g g' dt / 2``; the VE
    reverse-diffusion predictor is ``a = G**2, b = G``; the Langevin corrector is
    ``a = eps, b = sqrt(2 eps)``.

    Args:
        x: (B, ...) state, float32/float16/bfloat16; arithmetic is float32.
        score: score (or drift) of x's shape, dtype and device.
        a, b, c: floats, or float tensors of one value, one per sample (shape (B,) or (B, 1, ..., 1)) or
            one per element (x's shape).
        seed, step: noise-stream key and step counter (int or 1-element int64 tensor).
        lane: stream lane (0 predictor, 1 + r for the r-th corrector step).
        sample_offset: global index of sample 0 (for sharded sampling).
        add_noise: False returns the mean ``x + a*score`` (the last step of a sampler).
        inplace: write the result into x and return x.
        backend: see the module docstring.
    Returns:
        The new state, x's shape and dtype (x itself when inplace).
    """
    _check_x(x)
    check_float("score", score, like=x)
    a, b, c = as_coef("a", a, x), as_coef("b", b, x), as_coef("c", c, x)
    seed, step = as_counter("seed", seed, x.device), as_counter("step", step, x.device)
    if x.numel() == 0:
        return x if inplace else x.clone()
    impl = resolve_backend(backend, x.device, (x, score, a, b, c))
    if inplace:
        if impl == "torch":
            return x.copy_(torch_ops.sde_step(x, score, a, b, c, seed, step, lane, sample_offset, add_noise))
        op(name="sde_step_", backend=impl)(x, score, a, b, c, seed, step, lane, sample_offset, add_noise)
        return x
    return op("sde_step", impl)(x, score, a, b, c, seed, step, lane, sample_offset, add_noise)


def sample_sq_norms(score: torch.Tensor, *, seed=0, step=0, lane: int = 0, sample_offset: int = 0,
                    with_noise: bool = False, backend: str = "auto") -> torch.Tensor:
    """Per-sample squared L2 norms in one reduction pass: float32 (B, 2).

    Column 0 is ``sum(score_i**2)``; column 1 is ``sum(z_i**2)`` of the stream noise at
    (seed, step, lane) when ``with_noise`` (the same z an :func:`sde_step` with those
    arguments draws), else 0.
    """
    check_float("score", score)
    if score.dim() < 1:
        raise ValueError("score must have a leading batch dimension")
    seed, step = as_counter("seed", seed, score.device), as_counter("step", step, score.device)
    impl = resolve_backend(backend, score.device, (score,))
    return op("sample_sq_norms", impl)(score, seed, step, lane, sample_offset, with_noise)


NOISE_NORMS = ("fixed", "sampled")


def langevin_step_size(norms: torch.Tensor, snr: float, numel: int, noise_norm: str,
                       per_sample: bool) -> torch.Tensor:
    """Langevin step ``eps = 2 (snr * noise_norm / grad_norm)**2`` from :func:`sample_sq_norms`.

    ``grad_norm`` is the batch mean of per-sample score norms (tutorial), or each sample's own
    norm when ``per_sample``; ``noise_norm`` is ``sqrt(numel)`` (``"fixed"``) or the same
    statistic of the sampled z (``"sampled"``). Returns float32 (1,) or (B,).
    """
    norms = norms.sqrt()
    grad_norm, z_norm = norms[:, 0], norms[:, 1]
    if not per_sample:
        grad_norm, z_norm = grad_norm.mean().reshape(1), z_norm.mean().reshape(1)
    nn = z_norm if noise_norm == "sampled" else math.sqrt(numel)
    return 2.0 * (snr * nn / grad_norm) ** 2


def langevin_correct(x: torch.Tensor, score: torch.Tensor, snr: float, *, seed, step, lane: int = 1,
                     sample_offset: int = 0, noise_norm: str = "fixed", per_sample: bool = False,
                     inplace: bool = False, backend: str = "auto") -> torch.Tensor:
    """One Langevin corrector step ``x + eps*score + sqrt(2 eps) z`` as two fused passes.

    A reduction pass takes the per-sample norms of ``score`` (and of z for
    ``noise_norm="sampled"``); the update pass makes the same z again from the stream rather
    than storing it. See :func:`langevin_step_size` for ``eps``.

    Args:
        x, score: (B, ...) state and its score, same shape/dtype/device.
        snr: signal-to-noise ratio, > 0 (tutorial: 0.16).
        noise_norm: ``"fixed"`` (sqrt(d), tutorial) or ``"sampled"`` (score_sde / diffusers).
        per_sample: use each sample's own norms, so that it does not depend on its batch.
        Others as :func:`sde_step`; ``lane`` defaults to the first corrector lane.
    """
    _check_x(x)
    check_float("score", score, like=x)
    check_choice("noise_norm", noise_norm, NOISE_NORMS)
    snr = check_positive("snr", snr)
    if x.numel() == 0:
        return x if inplace else x.clone()
    impl = resolve_backend(backend, x.device, (x, score))
    seed, step = as_counter("seed", seed, x.device), as_counter("step", step, x.device)
    norms = op("sample_sq_norms", impl)(score, seed, step, lane, sample_offset, noise_norm == "sampled")
    eps = langevin_step_size(norms, snr, x.numel() // x.shape[0], noise_norm, per_sample)
    return sde_step(x, score, eps, (2.0 * eps).sqrt(), _zero(x.device), seed=seed, step=step, lane=lane,
                    sample_offset=sample_offset, inplace=inplace, backend=impl)


@functools.lru_cache(maxsize=None)
def _zero(device: torch.device) -> torch.Tensor:
    """A read-only float32 zero coefficient per device, so a corrector step allocates none."""
    return torch.zeros(1, dtype=torch.float32, device=device)


def philox_normal(batch: int, numel: int, *, seed, step=0, lane: int = 0, sample_offset: int = 0,
                  device: torch.device | str = "cpu", backend: str = "auto") -> torch.Tensor:
    """Standard normals of the stream: float32 (batch, numel) for samples ``sample_offset + i``."""
    device = canonical_device(device)
    batch, numel = _check_sizes(batch, numel)
    seed, step = as_counter("seed", seed, device), as_counter("step", step, device)
    return op("philox_normal", resolve_backend(backend, device))(seed, step, lane, sample_offset, batch, numel)


def philox_bits(batch: int, numel: int, *, seed, step=0, lane: int = 0, sample_offset: int = 0,
                device: torch.device | str = "cpu", backend: str = "auto") -> torch.Tensor:
    """The stream's raw uint32 words bit-cast to int32: (batch, 4 * ceil(numel / 4))."""
    device = canonical_device(device)
    batch, numel = _check_sizes(batch, numel)
    seed, step = as_counter("seed", seed, device), as_counter("step", step, device)
    return op("philox_bits", resolve_backend(backend, device))(seed, step, lane, sample_offset, batch, numel)


def _check_sizes(batch, numel) -> tuple[int, int]:
    return check_int("batch", batch, 0), check_int("numel", numel, 0)


def _check_stages(y, ks, coeffs, name):
    check_float("y", y)
    if len(ks) != len(coeffs) or not ks:
        raise ValueError(f"need one {name} coefficient per stage: {len(ks)} stages, {len(coeffs)} coefficients")
    for j, k in enumerate(ks):
        check_float(f"ks[{j}]", k, like=y)


def rk_combine(y: torch.Tensor, ks: Sequence[torch.Tensor], coeffs: Sequence[float], h: float,
               *, backend: str = "auto") -> torch.Tensor:
    """Runge-Kutta stage combination ``y + h * sum_j coeffs[j] * ks[j]`` in one pass."""
    _check_stages(y, ks, coeffs, "stage")
    impl = resolve_backend(backend, y.device, (y, *ks))
    return op("rk_combine", impl)(y, list(ks), [float(c) for c in coeffs], float(h))


def rk_error_norm(y: torch.Tensor, y_new: torch.Tensor, ks: Sequence[torch.Tensor], e: Sequence[float],
                  h: float, atol: float, rtol: float, *, backend: str = "auto") -> torch.Tensor:
    """scipy's RK45 error norm ``rms(h * sum_j e[j] k_j / (atol + rtol * max(|y|, |y_new|)))``.

    One fused reduction pass; returns a float32 0-d tensor on y's device.
    """
    _check_stages(y, ks, e, "error")
    check_float("y_new", y_new, like=y)
    impl = resolve_backend(backend, y.device, (y, y_new, *ks))
    sq = op("rk_error_sq", impl)(y, y_new, list(ks), [float(c) for c in e], float(h), float(atol), float(rtol))
    return (sq / max(y.numel(), 1)).sqrt()
