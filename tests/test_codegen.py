"""The kernels compiled for a Hopper GPU (sm_90), read on a machine without one.

Triton's interpreter, which runs the kernels' arithmetic in the other tests, never compiles them,
so this is where a kernel that only the compiler rejects fails without a GPU. The CUDA kernels
are read from the built scoreops._C. Both are checked for what the performance model
(docs/design.md) counts on: x, s and out move in whole 4-element vectors (16 bytes in float32) where
sizes allow, and nothing spills to local memory.

The Triton kernels are compiled in a child process (this file run as a script): TRITON_INTERPRET,
which the other tests set, must be off when Triton is first imported. cuobjdump comes with
Triton's NVIDIA backend.
"""
import collections
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile

import pytest

ARCH = 90
# Plenty for a memory-bound kernel at full occupancy; a jump past it means something went wrong.
MAX_REGISTERS = 128
DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


def _variants():
    """``(id, module, kernel, argument types, constexprs)`` for the launches the op wrappers make:
    every coefficient layout, dtype, noise flag and stage count, at the wrappers' largest blocks.
    Arguments named in neither dict are constexprs; pointers and sizes are taken to be
    multiples of 16 (Triton specialises launches on that)."""
    stream = dict(seed_ptr="*i64", step_ptr="*i64", lane="i32", sample_offset="i32")
    for dtype, t in DTYPES.items():
        step = dict(out_ptr=f"*{t}", x_ptr=f"*{t}", s_ptr=f"*{t}", a_ptr="*fp32", b_ptr="*fp32", c_ptr="*fp32",
                    **stream, numel="i32", groups="i32", pairs="i32")
        for mode in (0, 1, 2):
            yield (f"sde_step-{dtype}-coef{mode}", "sde_step", "sde_step_kernel", step,
                   dict(A_MODE=mode, B_MODE=mode, C_MODE=mode, ADD_NOISE=True, BLOCK=256))
        yield (f"sde_step-{dtype}-mean", "sde_step", "sde_step_kernel", step,
               dict(A_MODE=1, B_MODE=0, C_MODE=0, ADD_NOISE=False, BLOCK=256))
        for with_noise in (False, True):
            yield (f"sample_sq_norms-{dtype}-noise{int(with_noise)}", "sample_norms", "sample_sq_norms_kernel",
                   dict(partial_ptr="*fp32", s_ptr=f"*{t}", **stream, numel="i32", groups="i32"),
                   dict(WITH_NOISE=with_noise, BLOCK=256))
        terms = dict(out_ptr=f"*{t}", x_ptr=f"*{t}", **{f"t{j}": f"*{t}" for j in range(8)}, coefs_ptr="*fp32",
                     **stream, numel="i32", groups="i32", pairs="i32")
        for n_terms, add_noise in ((0, True), (7, True), (3, False)):
            yield (f"sigma_step-{dtype}-{n_terms}terms-noise{int(add_noise)}", "sigma_step", "sigma_step_kernel",
                   terms, dict(N_TERMS=n_terms, ADD_NOISE=add_noise, BLOCK=256))
        stages = {f"k{j}": f"*{t}" for j in range(8)}
        for n_stages in (1, 7):
            yield (f"rk_combine-{dtype}-{n_stages}stages", "rk", "rk_combine_kernel",
                   dict(out_ptr=f"*{t}", y_ptr=f"*{t}", **stages, **{f"c{j}": "fp32" for j in range(8)},
                        h="fp32", n="i32"),
                   dict(N_STAGES=n_stages, BLOCK=1024))
            yield (f"rk_error_sq-{dtype}-{n_stages}stages", "rk", "rk_error_sq_kernel",
                   dict(partial_ptr="*fp32", y_ptr=f"*{t}", y_new_ptr=f"*{t}", **stages,
                        **{f"e{j}": "fp32" for j in range(8)}, h="fp32", atol="fp32", rtol="fp32", n="i32"),
                   dict(N_STAGES=n_stages, BLOCK=1024))
    yield ("philox_bits", "philox", "philox_bits_kernel", dict(out_ptr="*i32", **stream, groups="i32", pairs="i32"),
           dict(BLOCK=256))
    yield ("philox_normal", "philox", "philox_normal_kernel",
           dict(out_ptr="*fp32", **stream, numel="i32", groups="i32", pairs="i32"), dict(BLOCK=256))


def _access_widths(ptx: str, op: str) -> dict[str, int]:
    """Global loads or stores by width in bytes: ``{"16": 2, "4": 7}``."""
    widths = collections.Counter()
    for vec, kind in re.findall(rf"\b{op}\.global(?:\.[a-z]+)*?(?:\.v(\d))?\.[bfsu](\d+)\b", ptx):
        widths[str(int(vec or 1) * int(kind) // 8)] += 1
    return dict(widths)


def compile_all() -> dict:
    """Compile every variant for sm_90; returns per variant its registers, stack and local bytes,
    and the widths of its global loads and stores."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    cuobjdump = _cuobjdump()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for vid, module, name, types, constexprs in _variants():
            fn = getattr(importlib.import_module(f"scoreops.kernels.{module}"), name)
            signature = {arg: types.get(arg, "constexpr") for arg in fn.arg_names}
            aligned = [arg for arg, t in types.items() if t.startswith("*") or arg in ("numel", "n")]
            attrs = {(fn.arg_names.index(arg),): [["tt.divisibility", 16]] for arg in aligned}
            kernel = triton.compile(ASTSource(fn, signature, constexprs, attrs=attrs),
                                    target=GPUTarget("cuda", ARCH, 32))
            cubin = pathlib.Path(tmp, f"{vid}.cubin")
            cubin.write_bytes(kernel.asm["cubin"])
            usage = subprocess.run([str(cuobjdump), "--dump-resource-usage", str(cubin)], check=True,
                                   capture_output=True, text=True).stdout
            resources = {key: int(value) for key, value in re.findall(r"\b(REG|STACK|LOCAL):(\d+)", usage)}
            ptx = kernel.asm["ptx"]
            results[vid] = dict(resources, loads=_access_widths(ptx, "ld"), stores=_access_widths(ptx, "st"),
                                fma=len(re.findall(r"\bfma\.rn\.f32\b", ptx)))
    return results


def _cuobjdump() -> pathlib.Path:
    nvidia = pytest.importorskip("triton.backends.nvidia")
    tool = pathlib.Path(nvidia.__file__).parent / "bin" / "cuobjdump"
    if not os.access(tool, os.X_OK):
        pytest.skip(f"Triton's NVIDIA backend has no cuobjdump ({tool})")
    return tool


# ----------------------------------------------------------------------------- Triton kernels
@pytest.fixture(scope="module")
def compiled():
    _cuobjdump()
    env = dict(os.environ, TRITON_INTERPRET="0")
    run = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"compiling the kernels for sm_{ARCH} failed:\n{run.stderr[-4000:]}"
    return json.loads(run.stdout)


VARIANT_IDS = [v[0] for v in _variants()]


@pytest.mark.parametrize("vid", VARIANT_IDS)
def test_kernel_compiles_for_hopper_without_spills(compiled, vid):
    facts = compiled[vid]
    assert 0 < facts["REG"] <= MAX_REGISTERS, facts
    # Local memory would be spilled registers; the small stack frame some kernels have is
    # libdevice's sin/cos slow path for huge arguments, which Box-Muller's 2 pi u never takes.
    assert facts["LOCAL"] == 0, facts
    assert facts["STACK"] <= 64, facts


@pytest.mark.parametrize("dtype", DTYPES)
def test_step_moves_whole_element_groups_per_access(compiled, dtype):
    # Each thread holds groups of 4 elements: x and s arrive in 4-element vectors (16 bytes in
    # float32, 8 in half precision) and out leaves in them.
    group = str(4 * (4 if dtype == "float32" else 2))
    for variant, noisy in [(f"coef{mode}", True) for mode in (0, 1, 2)] + [("mean", False)]:
        facts = compiled[f"sde_step-{dtype}-{variant}"]
        # seed and step are one 8-byte load each, as wide as a half-precision group.
        counters = 2 if noisy and group == "8" else 0
        assert facts["loads"].get(group, 0) - counters >= 2, facts
        assert set(facts["stores"]) == {group}, facts
    # Per-element float32 coefficients a, b and c come in 16-byte vectors too.
    assert compiled[f"sde_step-{dtype}-coef2"]["loads"].get("16", 0) >= 3 + 2 * (group == "16")


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigma_step_moves_whole_element_groups_per_access(compiled, dtype):
    # x and each of the 7 terms arrive in 4-element vectors and out leaves in them, as in sde_step.
    group = str(4 * (4 if dtype == "float32" else 2))
    facts = compiled[f"sigma_step-{dtype}-7terms-noise1"]
    counters = 2 if group == "8" else 0  # seed and step: one 8-byte load each
    assert facts["loads"].get(group, 0) - counters >= 8, facts
    assert set(facts["stores"]) == {group}, facts


@pytest.mark.parametrize("dtype", DTYPES)
def test_update_arithmetic_is_not_contracted_into_fma(compiled, dtype):
    # The reference rounds a * s before adding x; so must the kernels, or the noise-free step
    # (and the stage sums) would differ from it by an ulp. libdevice's log/sin/cos, inside the
    # noisy kernels, use FMA internally, which is theirs to do.
    for vid in (f"sde_step-{dtype}-mean", f"rk_combine-{dtype}-7stages", f"rk_error_sq-{dtype}-7stages",
                f"sigma_step-{dtype}-3terms-noise0"):
        assert compiled[vid]["fma"] == 0, (vid, compiled[vid])


def test_reductions_and_stage_sums_read_vectors(compiled):
    assert compiled["sample_sq_norms-float32-noise1"]["loads"].get("16", 0) >= 1
    facts = compiled["rk_combine-float32-7stages"]
    # y and the 7 stages, each read in 16-byte vectors; out written in them.
    assert facts["loads"].get("16", 0) >= 8 and set(facts["stores"]) == {"16"}, facts


# ----------------------------------------------------------------------------- CUDA kernels
@pytest.fixture(scope="module")
def cuda_sass():
    """``{mangled name: ((kernel, dtype, vectorised), resources, SASS text)}`` of the sm_90 code
    in scoreops._C."""
    import torch

    from scoreops import _C
    if not torch.ops.scoreops.built_with_cuda():
        pytest.skip("scoreops._C was built without its CUDA kernels")
    tool, lib = str(_cuobjdump()), _C.__file__
    usage = subprocess.run([tool, "--dump-resource-usage", "--gpu-architecture", f"sm_{ARCH}", lib], check=True,
                           capture_output=True, text=True).stdout
    sass = subprocess.run([tool, "--dump-sass", "--gpu-architecture", f"sm_{ARCH}", lib], check=True,
                          capture_output=True, text=True).stdout
    functions = re.findall(r"Function (\S+?):\n\s*(.*)", usage)
    if not functions:
        pytest.skip(f"scoreops._C holds no sm_{ARCH} code (see SCOREOPS_CUDA_ARCHS)")
    kernels = {}
    for mangled, resources in functions:
        key = _cuda_kernel_key(mangled)
        code = re.search(rf"Function : {re.escape(mangled)}\n(.*?)(?=\n\s*Function : |\Z)", sass, re.S)
        assert code, f"no sm_{ARCH} code for {mangled}"
        kernels[mangled] = (key, {k: int(v) for k, v in re.findall(r"\b(REG|STACK|LOCAL):(\d+)", resources)},
                            code.group(1))
    return kernels


def _cuda_kernel_key(mangled: str) -> tuple[str, str, bool]:
    """(kernel name, element type, vectorised) from a mangled template instance name."""
    # <length><name>, then I (template arguments) or E (end of the nested name).
    name = re.search(r"\d+([a-z_]+_kernel)(?=[IE])", mangled).group(1)
    dtype = next((d for tag, d in (("N3c104Half", "float16"), ("N3c108BFloat16", "bfloat16"), ("If", "float32"))
                  if f"{name}I{tag}" in mangled), "float32")
    return name, dtype, "Lb1E" in mangled


def _sass_of(cuda_sass, key: tuple[str, str, bool]) -> str:
    (code,) = [code for k, _, code in cuda_sass.values() if k == key]
    return code


def test_cuda_kernels_use_no_local_memory(cuda_sass):
    assert {key[0] for key, _, _ in cuda_sass.values()} >= {
        "sde_step_kernel", "sq_norms_partial_kernel", "sum_partials_kernel", "rk_combine_kernel",
        "rk_error_partial_kernel", "philox_normal_kernel", "philox_bits_kernel", "sigma_step_kernel"}
    for key, resources, _ in cuda_sass.values():
        assert resources["STACK"] == 0 and resources["LOCAL"] == 0, (key, resources)
        assert 0 < resources["REG"] <= MAX_REGISTERS, (key, resources)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_step_moves_whole_element_groups_per_access(cuda_sass, dtype):
    # The vectorised instance (taken when x, s, out and a carry are aligned to 4 elements and a
    # sample's size is a multiple of 4) loads x and s and stores out as 4-element vectors, and a
    # carried Brownian walk's float32 carry as one 128-bit vector.
    width = 128 if dtype == "float32" else 64
    code = _sass_of(cuda_sass, ("sde_step_kernel", dtype, True))
    assert len(re.findall(rf"\bLDG\.E\.{width}\b", code)) >= 2, code
    assert sorted(re.findall(r"\bSTG\.E[.A-Z0-9]*", code)) == sorted([f"STG.E.{width}", "STG.E.128"])
    # The scalar instance, for the rest, stores element by element.
    scalar = _sass_of(cuda_sass, ("sde_step_kernel", dtype, False))
    assert f"STG.E.{width}" not in scalar


@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_sigma_step_moves_whole_element_groups_per_access(cuda_sass, dtype):
    # The vectorised instance loads x and every term as 4-element vectors (the terms' loop is
    # unrolled over all kMaxTerms slots: 1 + 8 vector loads) and stores out as one, and a carried
    # Brownian walk's float32 carry as one 128-bit vector.
    width = 128 if dtype == "float32" else 64
    code = _sass_of(cuda_sass, ("sigma_step_kernel", dtype, True))
    assert len(re.findall(rf"\bLDG\.E\.{width}\b", code)) >= 9, code
    assert sorted(re.findall(r"\bSTG\.E[.A-Z0-9]*", code)) == sorted([f"STG.E.{width}", "STG.E.128"])


if __name__ == "__main__":
    json.dump(compile_all(), sys.stdout)
