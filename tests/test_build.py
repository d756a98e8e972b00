"""The built extension scoreops._C: its op registry, its build configuration (CUDA kernels when
a toolkit was there, torch's OpenMP runtime, nothing of the GPU needed by the CPU kernels), and
CPU results that do not depend on the thread count; and setup.py's one-line refusal to build
without a usable C++ compiler.

The CPU-only build itself (SCOREOPS_CUDA=0) takes a minute or two on two cores, so it runs only
with SCOREOPS_TEST_BUILD=1.
"""
import ctypes
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import scoreops
from scoreops.ops import backends, torch_ops

ROOT = Path(__file__).resolve().parents[1]
# The folder holding the scoreops this test imported (the source tree or site-packages), so that
# subprocesses load the same build.
PACKAGE_PARENT = str(Path(scoreops.__file__).resolve().parents[1])
OPS = ("built_with_cuda", "philox_bits", "philox_normal", "sde_step", "sde_step_", "sample_sq_norms",
       "sigma_step", "rk_combine", "rk_error_sq", "adaptive_sde_step")


@pytest.fixture(scope="module")
def scoreops_c():
    if backends._load_cpp() is not None:
        pytest.fail(f"scoreops._C is not built: {backends._load_cpp()}")
    import scoreops._C as ext
    return ext


def _run_python(code: str, **env) -> str:
    path = os.pathsep.join(filter(None, [PACKAGE_PARENT, os.environ.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT / "tests", capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": path, **env}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_every_op_of_the_contract_is_registered(scoreops_c):
    for name in OPS:
        assert hasattr(torch.ops.scoreops, name), name
    assert isinstance(torch.ops.scoreops.built_with_cuda(), bool)


def _toolkit_found() -> bool:
    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    return shutil.which("nvcc") is not None or os.path.exists(os.path.join(cuda_home, "bin", "nvcc"))


@pytest.mark.skipif(os.environ.get("SCOREOPS_CUDA", "auto").lower() in ("0", "off", "false", "no"),
                    reason="SCOREOPS_CUDA=0 builds without CUDA kernels on purpose")
def test_cuda_kernels_are_built_where_a_toolkit_is(scoreops_c):
    expected = torch.version.cuda is not None and _toolkit_found()
    assert torch.ops.scoreops.built_with_cuda() == expected


def _omp_entry(library: str) -> int:
    """Address of the omp_get_max_threads that `library` (already loaded) resolves to."""
    return ctypes.cast(ctypes.CDLL(library).omp_get_max_threads, ctypes.c_void_p).value


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux shared-library layout")
@pytest.mark.skipif("ATen parallel backend: OpenMP" not in torch.__config__.parallel_info(),
                    reason="torch does not use OpenMP")
def test_extension_shares_torchs_openmp_runtime(scoreops_c):
    # The extension links libgomp for at::parallel_for; a second OpenMP runtime would ignore
    # torch.set_num_threads and oversubscribe the cores.
    (torch_cpu,) = (Path(torch.__file__).parent / "lib").glob("libtorch_cpu.so")
    assert _omp_entry(scoreops_c.__file__) == _omp_entry(str(torch_cpu))


def test_cpu_kernels_need_no_gpu(scoreops_c):
    out = _run_python("""
        import torch
        import scoreops._C
        x = torch.randn(3, 5)
        one = torch.ones(1)
        seed, step = torch.tensor([7]), torch.tensor([1])
        y = torch.ops.scoreops.sde_step(x, x, one, one, one, seed, step, 0, 0, True)
        torch.ops.scoreops.sample_sq_norms(y, seed, step, 1, 0, True)
        print(torch.cuda.is_initialized())
    """, CUDA_VISIBLE_DEVICES="")
    assert out.strip() == "False"


def _cpu_results(x, s, coef, seed):
    seed_t, step_t = torch.tensor([seed]), torch.tensor([3])
    ks = [s, x, s * 2]
    return (torch.ops.scoreops.sde_step(x, s, coef, coef, coef, seed_t, step_t, 0, 0, True),
            torch.ops.scoreops.sample_sq_norms(s, seed_t, step_t, 1, 0, True),
            torch.ops.scoreops.rk_error_sq(x, s, ks, [0.3, -0.2, 0.1], 0.01, 1e-5, 1e-3))


def test_cpu_results_do_not_depend_on_the_thread_count(scoreops_c, seed):
    x = torch.randn(6, 3, 67, 61)  # many tiles per sample, a partial last tile
    s = torch.randn_like(x)
    coef = torch.rand(6)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = _cpu_results(x, s, coef, seed)
        torch.set_num_threads(max(threads, 2))
        parallel = _cpu_results(x, s, coef, seed)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(serial, parallel):
        assert torch.equal(a, b)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("SCOREOPS_TEST_BUILD") != "1", reason="set SCOREOPS_TEST_BUILD=1 to build (1-2 min)")
def test_cpu_only_build(tmp_path, seed):
    env = {**os.environ, "SCOREOPS_CUDA": "0"}
    subprocess.run([sys.executable, "setup.py", "build_ext", "--build-lib", str(tmp_path / "lib"),
                    "--build-temp", str(tmp_path / "tmp")], cwd=ROOT, env=env, check=True, capture_output=True)
    (library,) = (tmp_path / "lib" / "scoreops").glob("_C*.so")
    x, half = torch.randn(4, 37), torch.full((1,), 0.5)
    want = torch_ops.sde_step(x, x, half, half, half, torch.tensor([seed]), torch.tensor([2]), 0, 0, True)
    torch.save({"x": x, "want": want, "seed": seed}, tmp_path / "case.pt")
    out = _run_python(f"""
        import torch
        torch.ops.load_library({str(library)!r})
        case = torch.load({str(tmp_path / "case.pt")!r})
        x, half = case["x"], torch.full((1,), 0.5)
        got = torch.ops.scoreops.sde_step(x, x, half, half, half, torch.tensor([case["seed"]]), torch.tensor([2]),
                                          0, 0, True)
        torch.testing.assert_close(got, case["want"], rtol=1e-5, atol=1e-5)
        print(torch.ops.scoreops.built_with_cuda())
    """)
    assert out.strip() == "False"


@pytest.mark.parametrize("is_checkout,broken_build", [(True, False), (False, False), (True, True)])
def test_an_unbuilt_source_checkout_says_it_shadows_the_installed_package(tmp_path, is_checkout, broken_build):
    # The package's Python files alone, as in a clone, started from the clone's root.
    shutil.copytree(Path(scoreops.__file__).parent, tmp_path / "scoreops",
                    ignore=shutil.ignore_patterns("_C*", "benchmarks", "__pycache__"))
    if is_checkout:
        (tmp_path / "setup.py").write_text("")
        (tmp_path / "csrc").mkdir()
    if broken_build:  # an in-place build that fails to load is not a missing one
        (tmp_path / "scoreops" / "_C.abi3.so").write_bytes(b"not a shared object")
    proc = subprocess.run([sys.executable, "-c", "from scoreops import ops; print(ops.available_backends('cpu'))"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRITON_INTERPRET")})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "['torch']"
    warned = "source checkout" in proc.stderr and "build_ext --inplace" in proc.stderr
    assert warned == (is_checkout and not broken_build), proc.stderr


# setup.py's compiler check runs before anything is built, on a copy of the build files alone.
NO_COMPILER = "building needs a C++ compiler, and"
FIX = "install g++ 10 or newer (e.g. `apt-get install g++`) or set CXX to a C++20 compiler"


def _build_files(folder: Path) -> Path:
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, folder / name)
    return folder


def _fake_compiler(folder: Path, script: str) -> str:
    """An executable that answers the check's preprocessor run as ``script`` (sh) does."""
    path = folder / "fake-c++"
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)
    return str(path)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX PATH and sh scripts")
@pytest.mark.skipif(subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode != 0,
                    reason="no pip in this environment")
def test_pip_install_without_a_compiler_stops_with_one_line(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _build_files(src)
    empty = tmp_path / "empty-path"
    empty.mkdir()
    env = {**{k: v for k, v in os.environ.items() if k != "CXX"}, "PATH": str(empty)}
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "--no-index",
                           "-w", str(tmp_path / "wheels"), str(src)], env=env, capture_output=True, text=True,
                          timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    want = f"scoreops: {NO_COMPILER} the default C++ compiler 'c++' is not found; {FIX}"
    assert want in [line.strip() for line in output.splitlines()], output
    assert "Traceback" not in output, output
    assert not list(tmp_path.glob("wheels/*.whl"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sh scripts as compilers")
@pytest.mark.parametrize("script,error", [
    (None, f"{NO_COMPILER} CXX '{{cxx}}' is not found; {FIX}"),
    ("echo 'cc1plus: not found' >&2; exit 1", f"CXX '{{cxx}}' cannot compile C++ (cc1plus: not found); {FIX}"),
    ("echo '#define __GNUC__ 9'", f"CXX '{{cxx}}' is GCC 9; torch's headers need C++20, GCC 10 or newer; {FIX}"),
    ("echo '#define __GNUC__ 10'", None),
    ("echo '#define __clang__ 1'; echo '#define __GNUC__ 4'", None),  # clang reports GCC 4.2 compatibility
], ids=["missing", "no-c++-frontend", "gcc-9", "gcc-10", "clang"])
def test_setup_checks_the_compiler_named_by_cxx(tmp_path, script, error):
    cxx = _fake_compiler(tmp_path, script) if script else str(tmp_path / "no-such-c++")
    proc = subprocess.run([sys.executable, "setup.py", "--name"], cwd=_build_files(tmp_path), capture_output=True,
                          text=True, timeout=300, env={**os.environ, "CXX": cxx})
    if error is None:
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == ["scoreops"]
    else:
        assert proc.returncode == 1
        assert proc.stderr.strip() == "scoreops: " + error.format(cxx=cxx)
        assert proc.stdout == ""


@pytest.mark.skipif(shutil.which((os.environ.get("CXX", "c++").split() or [""])[0]) is None,
                    reason="no C++ compiler here")
def test_setup_accepts_this_machines_compiler(tmp_path):
    proc = subprocess.run([sys.executable, "setup.py", "--name"], cwd=_build_files(tmp_path), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["scoreops"]
