#!/usr/bin/env bash
# The one-call check on a lent GPU: build scoreops with its CUDA kernels, run the GPU tests, run
# both benchmarks, and leave the log, the test report and the result tables under $OUT
# (benchmarks/results/gpu-check-<UTC stamp> when unset). Needs no network and finishes in under
# 8 minutes: every stage has its own time limit inside one overall budget.
#
# Usage: benchmarks/gpu_check.sh [--dry-run]
#   --dry-run   for a machine without a GPU: check the Python packages and build the package,
#               CUDA kernels included, then stop before the stages that need a GPU.
# Environment:
#   PYTHON              the interpreter that holds torch (default: python3)
#   GPU_CHECK_SECONDS   overall budget in seconds (default: 450)
#
# Python packages missing on the machine can travel as wheels in .whl/ (see the device notes);
# they are installed with --no-index before anything else.
#
# Files under $OUT: gpu_check.log (everything printed), tests.xml (JUnit report of the GPU
# tests), steps-<gpu>.json/.md and samplers-<gpu>.json/.md. Exit status: 0 when every stage
# passed, 1 when one failed or ran out of time, 2 when there is no GPU (nothing was built).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_SECONDS:-450}
OUT=${OUT:-benchmarks/results/gpu-check-$(date -u +%Y%m%dT%H%M%SZ)}
OUT=$(mkdir -p "$OUT" && cd "$OUT" && pwd)
SITE=${TMPDIR:-/tmp}/scoreops-gpu-check-site
DRY_RUN=0
case "${1:-}" in
  "") ;;
  --dry-run) DRY_RUN=1 ;;
  *) echo "usage: $0 [--dry-run]" >&2; exit 64 ;;
esac

FAILED=()
SUMMARY=()

# stage NAME LIMIT_S CMD...: run CMD under min(LIMIT_S, what is left of the budget); record the outcome.
stage() {
  local name=$1 limit=$2
  shift 2
  local left=$((BUDGET - SECONDS))
  ((limit > left)) && limit=$left
  if ((limit < 10)); then
    echo "== $name: skipped, the ${BUDGET}s budget is spent"
    FAILED+=("$name"); SUMMARY+=("$name: skipped (out of time)")
    return 0
  fi
  echo "== $name (limit ${limit}s)"
  local start=$SECONDS rc=0
  timeout --kill-after=10 "$limit" bash -euo pipefail -c '"$@"' "$name" "$@" || rc=$?
  local took=$((SECONDS - start))
  if ((rc == 0)); then
    SUMMARY+=("$name: ok (${took}s)")
  elif ((rc == 124 || rc == 137)); then
    SUMMARY+=("$name: TIMED OUT after ${took}s"); FAILED+=("$name")
  else
    SUMMARY+=("$name: FAILED, exit $rc (${took}s)"); FAILED+=("$name")
  fi
  echo "== $name: ${SUMMARY[-1]#*: }"
}

# Print the Python and torch versions and the GPU torch sees; fail when it sees none.
probe_gpu() {
  "$PY" -c 'import sys, torch
gpu = torch.cuda.is_available()
print("python", sys.version.split()[0], "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| gpu", torch.cuda.get_device_name() if gpu else None)
sys.exit(0 if gpu else 1)'
}

describe_machine() {
  echo "== machine"
  date -u +%Y-%m-%dT%H:%M:%SZ
  uname -a
  nproc
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv || true
  else
    echo "nvidia-smi: not found"
  fi
  command -v nvcc >/dev/null && nvcc --version | tail -n 2 || echo "nvcc: not found"
}

install_wheels() {
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE-deps" .whl/*.whl
}

# The packages the build, the tests and the benchmarks import.
check_packages() {
  "$PY" - <<'EOF'
import importlib, sys
needed = ["torch", "triton", "numpy", "scipy", "sklearn", "safetensors", "tqdm", "matplotlib", "PIL",
          "torchvision", "pytest", "xdist", "setuptools", "wheel", "ninja"]
missing = []
for name in needed:
    try:
        module = importlib.import_module(name)
        print(f"{name} {getattr(module, '__version__', '')}")
    except ImportError:
        missing.append(name)
if missing:
    sys.exit(f"missing Python packages: {', '.join(missing)}; carry them as wheels in .whl/ (see the device notes)")
import setuptools
if tuple(int(part) for part in setuptools.__version__.split(".")[:2]) < (77, 0):
    sys.exit(f"setuptools {setuptools.__version__} cannot build scoreops (pyproject's SPDX license needs >= 77); "
             "carry a newer setuptools wheel in .whl/")
EOF
}

# Build scoreops with its CUDA kernels for sm_90 into $SITE, offline, against the installed torch.
build() {
  rm -rf "$SITE"
  SCOREOPS_CUDA=1 SCOREOPS_CUDA_ARCHS=90 MAX_JOBS=$(nproc) \
    "$PY" -m pip install --no-build-isolation --no-deps --no-index --no-cache-dir --target "$SITE" .
  # Import from outside the source tree, so that the installed package is the one checked.
  (cd "$SITE" && "$PY" -c 'import torch, scoreops.ops as ops
assert "cpu" in ops.available_backends("cpu"), "scoreops._C does not load"
assert torch.ops.scoreops.built_with_cuda(), "scoreops._C was built without its CUDA kernels"
on_cuda = ops.available_backends("cuda") if torch.cuda.is_available() else "-"
print("built:", ops.__file__, "| backends on cuda:", on_cuda)')
}

gpu_tests() {
  # From tests/, so that the installed package, not the source tree, is imported. One module that
  # fails to import under this torch must not keep the others from running on the one lent GPU.
  # Eight workers: the GPU is shared, the CPU cores compile the Triton and Inductor kernels.
  # A per-test limit (pytest-timeout, in the GPU image) keeps one hung test from taking the stage.
  local per_test=()
  "$PY" -c 'import pytest_timeout' 2>/dev/null && per_test=(--timeout=90)
  (cd tests && "$PY" -m pytest -m cuda -q -n 8 -p no:cacheprovider --continue-on-collection-errors \
    "${per_test[@]}" --junitxml="$OUT/tests.xml")
}

bench() {
  "$PY" "benchmarks/$1.py" --device cuda --out "$OUT" "${@:2}"
}

main() {
  echo "gpu_check: results under $OUT"
  describe_machine
  if ! probe_gpu && ((!DRY_RUN)); then
    echo "gpu_check: no CUDA GPU is visible to torch, so there is nothing to check here; stopping before the build." \
         "Run it on a machine with a GPU, or pass --dry-run to check the packages and the build alone."
    return 2
  fi
  if compgen -G ".whl/*.whl" >/dev/null; then
    stage wheels 60 install_wheels
    export PYTHONPATH=$SITE-deps${PYTHONPATH:+:$PYTHONPATH}
  fi
  stage packages 60 check_packages
  ((${#FAILED[@]})) && { echo "gpu_check: stopping: ${SUMMARY[-1]}"; return 1; }
  stage build 240 build
  ((${#FAILED[@]})) && { echo "gpu_check: stopping: the build failed"; return 1; }
  export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
  if ((DRY_RUN)); then
    echo "gpu_check: dry run: the packages and the build are fine; stopping before the GPU tests and benchmarks."
    return 0
  fi
  # The tests may take what the two benchmarks (250 s) leave of the budget: at most 150 s, and at
  # least 60 s, which a slow build takes from the benchmarks.
  local tests_limit=$((BUDGET - SECONDS - 250))
  ((tests_limit > 150)) && tests_limit=150
  ((tests_limit < 60)) && tests_limit=60
  stage tests "$tests_limit" gpu_tests
  # Three sizes, largest first so that a time limit costs the least important: two past the L2
  # cache (the bandwidth targets) and one launch-bound; bench_steps.py's own GPU default has five.
  stage bench_steps 120 bench bench_steps --min-run-time 0.03 --sizes 2^26,2^24,64x1x28x28
  stage bench_samplers 130 bench bench_samplers --min-run-time 0.05
  # A stage stopped by its time limit can leave atomic_write's hidden temporary files behind.
  rm -f "$OUT"/.*.json.* "$OUT"/.*.md.*
  echo "== summary (${SECONDS}s)"
  printf '  %s\n' "${SUMMARY[@]}"
  for table in "$OUT"/*.md; do
    [[ -e $table ]] && { echo; cat "$table"; }
  done
  ((${#FAILED[@]} == 0))
}

# Stages run in a child bash under `timeout`, which sees exported functions and variables only.
export -f install_wheels check_packages build gpu_tests bench
export PY SITE OUT PYTHONUNBUFFERED=1
main 2>&1 | tee "$OUT/gpu_check.log"
