"""Test helper: the peer libraries the few-step samplers are checked against, when installed.

k-diffusion 0.1.1.post1 is installed without its dependencies (they do not resolve beside NumPy 2),
and its package ``__init__`` imports training code, so only ``k_diffusion/sampling.py`` is loaded,
under a bare package module.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import pytest


def k_diffusion_sampling():
    """k-diffusion's ``sampling`` module, or skip the test saying why it is missing."""
    if "k_diffusion.sampling" in sys.modules:
        return sys.modules["k_diffusion.sampling"]
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("k-diffusion is not installed (make test installs it; see requirements-peers.txt)")
    package = types.ModuleType("k_diffusion")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["k_diffusion"] = package
    try:
        return importlib.import_module("k_diffusion.sampling")
    except ImportError as e:
        pytest.skip(f"k-diffusion's sampling module does not import: {e}")
