"""Triton kernels of scoreops, registered as ``torch.ops.scoreops.triton_<name>``.

Importing this package registers the ops of ``docs/kernels.md`` with the same arguments as the
C++ schemas; :mod:`scoreops.ops` dispatches to them for ``backend="triton"``. On GPU tensors they
are ``torch.library.triton_op``s, visible to ``torch.compile`` and safe in CUDA graphs (seed and
step are read on the device). On CPU tensors they run only in Triton's interpreter:
set ``TRITON_INTERPRET=1`` before triton is first imported.
"""
from . import adaptive_sde, philox, rk, sample_norms, sde_step, sigma_step  # noqa: F401  (registers the ops)
