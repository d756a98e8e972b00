"""Build scoreops._C (CPU kernels always; CUDA kernels when a toolkit is found) and map kernels/
to scoreops.kernels.

Environment flags:
    SCOREOPS_CUDA=auto|1|0    build the CUDA kernels: when nvcc and a CUDA torch are found (auto,
                              the default), always (1, fails without a toolkit), or never (0).
    SCOREOPS_CUDA_ARCHS       semicolon list of SM targets, default "80;90"; PTX of the last one
                              is embedded too, so newer GPUs JIT-compile it.
    CUDA_HOME                 toolkit root; defaults to /usr/local/cuda when that exists.
    MAX_JOBS                  parallel compile jobs (ninja).
"""
import glob
import os

from setuptools import setup

if os.path.isdir("/usr/local/cuda") and "CUDA_HOME" not in os.environ:
    # torch guesses CUDA_HOME from `which nvcc` (/usr/local on some machines), which fails at link time.
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

import torch  # noqa: E402
from torch.utils import cpp_extension  # noqa: E402

ROOT = os.path.dirname(os.path.abspath(__file__))


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
    archs = [a.strip().replace(".", "") for a in os.environ.get("SCOREOPS_CUDA_ARCHS", "80;90").split(";") if a.strip()]
    flags = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    flags.append(f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}")
    return flags


def _extension():
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    cxx = ["-O3", "-std=c++17", "-fopenmp", "-DPy_LIMITED_API=0x03090000"]
    extra = {"cxx": cxx}
    link = ["-fopenmp"]
    if _want_cuda():
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        extra["cxx"] = cxx + ["-DSCOREOPS_WITH_CUDA"]
        extra["nvcc"] = ["-O3", "-std=c++17", "-DSCOREOPS_WITH_CUDA"] + _gencode_flags()
        return cpp_extension.CUDAExtension("scoreops._C", sources, extra_compile_args=extra,
                                           extra_link_args=link, include_dirs=[os.path.join(ROOT, "csrc")],
                                           py_limited_api=True)
    return cpp_extension.CppExtension("scoreops._C", sources, extra_compile_args=extra, extra_link_args=link,
                                      include_dirs=[os.path.join(ROOT, "csrc")], py_limited_api=True)


setup(
    packages=["scoreops", "scoreops.kernels"],
    package_dir={"scoreops": "scoreops", "scoreops.kernels": "kernels"},
    ext_modules=[_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension},
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)
