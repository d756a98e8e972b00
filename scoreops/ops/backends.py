"""Which backends exist, and which one runs an op: the only module of scoreops that knows them.

``scoreops._C`` (the C++ and CUDA kernels) and ``scoreops.kernels`` (Triton) are imported on
first use, so that ``import scoreops`` stays cheap.
"""
from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path

import torch

from . import torch_ops

BACKENDS = ("auto", "torch", "cpu", "cuda", "triton")
# Backends that read seed and step on the device; the torch backend reads them on the host,
# which a CUDA graph cannot capture.
GRAPH_SAFE_BACKENDS = ("cuda", "triton")


@functools.lru_cache(maxsize=None)
def _load_cpp() -> str | None:
    """Import scoreops._C; returns None when loaded, else the reason it is missing."""
    try:
        from .. import _C  # noqa: F401  (registers torch.ops.scoreops.*)
        from . import _fake, autograd  # noqa: F401
    except ImportError as e:  # a source checkout or a failed build
        package = Path(__file__).resolve().parent.parent
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
        from .. import kernels  # noqa: F401  (registers torch.ops.scoreops.triton_*)
    except ImportError as e:
        return str(e)
    from .autograd import register_triton_autograd

    register_triton_autograd()
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


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """Map ``backend`` (possibly ``"auto"``) to a concrete backend for ``device``, or raise."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
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


def implementation(name: str, backend: str):
    """The raw implementation of op ``name`` for a concrete backend (no input checks)."""
    if backend == "torch":
        return getattr(torch_ops, name)
    if backend in ("cpu", "cuda"):
        return getattr(torch.ops.scoreops, name)
    if backend == "triton":
        return getattr(torch.ops.scoreops, "triton_" + name)
    raise ValueError(f"no concrete backend {backend!r}")
