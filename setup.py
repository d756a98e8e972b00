"""Build scoreops._C (CPU kernels always; CUDA kernels when a toolkit is found) and map
benchmarks/ to scoreops.benchmarks.

    pip install --no-build-isolation .                       # against the installed torch
    python setup.py build_ext --inplace                      # development: scoreops/_C*.so

Environment flags:
    SCOREOPS_CUDA=auto|1|0    build the CUDA kernels: when nvcc and a CUDA torch are found (auto,
                              the default), always (1, fails without a toolkit), or never (0).
    SCOREOPS_CUDA_ARCHS       semicolon list of SM targets, default "80;90"; PTX of the last one
                              is embedded too, so newer GPUs JIT-compile it.
    CUDA_HOME                 toolkit root; defaults to /usr/local/cuda when that exists.
    MAX_JOBS                  parallel compile jobs (ninja).
    CXX                       the C++ compiler (default: c++), GCC >= 10 or another C++20 compiler.
"""
import glob
import os
import shlex
import shutil
import subprocess
import sys

from setuptools import setup

# torch 2.14 (requirements.txt) compiles extensions with -std=c++20, which GCC accepts from version 10.
MIN_GCC = 10


def _check_cxx_compiler() -> None:
    """Stop with one line, not a compiler traceback, when the compiler that torch's BuildExtension
    runs ($CXX, else c++) is missing, cannot compile C++ (gcc without g++), or is GCC < MIN_GCC.

    One preprocessor run on an empty file: a few milliseconds.
    """
    compiler = os.environ.get("CXX", "c++")
    fix = f"install g++ {MIN_GCC} or newer (e.g. `apt-get install g++`) or set CXX to a C++20 compiler"
    where = "CXX" if "CXX" in os.environ else "the default C++ compiler"
    try:
        command = shlex.split(compiler)  # a launcher may come first, as in CXX="ccache g++"
    except ValueError as e:
        sys.exit(f"scoreops: CXX {compiler!r} is not a command line ({e}); {fix}")
    if not command or shutil.which(command[0]) is None:
        sys.exit(f"scoreops: building needs a C++ compiler, and {where} {compiler!r} is not found; {fix}")
    try:
        macros = subprocess.run([*command, "-dM", "-E", "-x", "c++", os.devnull], capture_output=True, text=True,
                                timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        sys.exit(f"scoreops: {where} {compiler!r} does not run ({e}); {fix}")
    if macros.returncode != 0:
        reason = (macros.stderr.strip().splitlines() or [f"exit code {macros.returncode}"])[0]
        sys.exit(f"scoreops: {where} {compiler!r} cannot compile C++ ({reason}); {fix}")
    defined = dict(line.split(" ", 2)[1:] for line in macros.stdout.splitlines()
                   if line.startswith("#define ") and line.count(" ") >= 2)
    gcc = defined.get("__GNUC__") if "__clang__" not in defined else None
    if gcc is not None and gcc.isdigit() and int(gcc) < MIN_GCC:
        sys.exit(f"scoreops: {where} {compiler!r} is GCC {gcc}; torch's headers need C++20, GCC {MIN_GCC} or "
                 f"newer; {fix}")


_check_cxx_compiler()

if os.path.isdir("/usr/local/cuda") and "CUDA_HOME" not in os.environ:
    # torch guesses CUDA_HOME from `which nvcc` (/usr/local on some machines), which fails at link time.
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

import torch  # noqa: E402
from torch.utils import cpp_extension  # noqa: E402

ROOT = os.path.dirname(os.path.abspath(__file__))

# No -std: BuildExtension adds the C++ standard the installed torch's headers need.
CXX_FLAGS = [
    "-O3",
    # at::parallel_for's OpenMP backend is inline in ATen's headers: without -fopenmp here it
    # silently runs on one thread. Linking -fopenmp records libgomp.so.1, which the loader
    # resolves to the copy torch has already loaded (same soname), so there is one OpenMP runtime
    # and torch.set_num_threads applies to these kernels too.
    "-fopenmp",
    # No a*b+c fusion: the vectorised and scalar clones of the CPU loops, the CUDA kernels
    # (-fmad=false) and the torch reference then round every operation the same way.
    "-ffp-contract=off",
    # sqrtf without an errno branch, so that the noise loops vectorise.
    "-fno-math-errno",
]
NVCC_FLAGS = ["-O3", "-fmad=false"]
LINK_FLAGS = ["-fopenmp"]


def _abi3_tag() -> str:
    """Wheel tag of the stable ABI that torch compiles py_limited_api extensions for (-DPy_LIMITED_API)."""
    version = int(cpp_extension.min_supported_cpython, 16)
    return f"cp{version >> 24}{(version >> 16) & 0xFF}"


def _want_cuda() -> bool:
    flag = os.environ.get("SCOREOPS_CUDA", "auto").lower()
    if flag in ("0", "off", "false", "no"):
        return False
    found = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    if flag in ("1", "on", "true", "yes"):
        if not found:
            raise RuntimeError("SCOREOPS_CUDA=1 but no CUDA toolkit (CUDA_HOME/nvcc) or no CUDA build of torch")
        return True
    return found


def _gencode_flags() -> list[str]:
    """Explicit targets: torch's default asks the (possibly absent) GPU for its architecture."""
    archs = [a.strip().replace(".", "") for a in os.environ.get("SCOREOPS_CUDA_ARCHS", "80;90").split(";") if a.strip()]
    flags = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    flags.append(f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}")
    return flags


def _extension():
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    common = dict(include_dirs=[os.path.join(ROOT, "csrc")], extra_link_args=LINK_FLAGS, py_limited_api=True)
    if not _want_cuda():
        return cpp_extension.CppExtension("scoreops._C", sources, extra_compile_args={"cxx": CXX_FLAGS}, **common)
    sources += sorted(glob.glob("csrc/cuda/*.cu"))
    flags = {"cxx": CXX_FLAGS + ["-DSCOREOPS_WITH_CUDA"], "nvcc": NVCC_FLAGS + _gencode_flags()}
    return cpp_extension.CUDAExtension("scoreops._C", sources, extra_compile_args=flags, **common)


setup(
    packages=["scoreops", "scoreops.core", "scoreops.ops", "scoreops.samplers", "scoreops.training",
              "scoreops.evaluation", "scoreops.commands", "scoreops.kernels", "scoreops.benchmarks"],
    # benchmarks/ stays a top-level folder in the checkout (`python benchmarks/...`) and installs
    # inside the package, so that `scoreops bench` finds the benchmarks.
    package_dir={"scoreops": "scoreops", "scoreops.benchmarks": "benchmarks"},
    ext_modules=[_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension},
    # One abi3 wheel serves every later Python: the module uses only the limited C API (no pybind11).
    options={"bdist_wheel": {"py_limited_api": _abi3_tag()}},
)
