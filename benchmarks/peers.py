"""The peer libraries the benchmarks run beside scoreops, when they are installed.

k-diffusion 0.1.1.post1 is installed without its dependencies (``requirements-peers.txt``: its
declared ones do not resolve beside NumPy 2), and its package ``__init__`` imports its training
code, so only ``k_diffusion/sampling.py`` is loaded, under a bare package module.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys
import types

INSTALL_HINT = "pip install --no-deps -r requirements-peers.txt"


def k_diffusion_sampling() -> tuple[types.ModuleType | None, str | None]:
    """k-diffusion's ``sampling`` module: ``(module, None)``, or ``(None, why it is missing)``."""
    if "k_diffusion.sampling" in sys.modules:
        return sys.modules["k_diffusion.sampling"], None
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        return None, f"k-diffusion not installed ({INSTALL_HINT})"
    if "k_diffusion" not in sys.modules:
        package = types.ModuleType("k_diffusion")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["k_diffusion"] = package
    try:
        return importlib.import_module("k_diffusion.sampling"), None
    except ImportError as e:
        return None, f"k-diffusion's sampling module does not import: {e}"


def version(distribution: str) -> str | None:
    """The installed version of ``distribution``, or None."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
