"""The step update alone: fused scoreops ops against the eager tutorial step and torch.compile of it.

For each update (Euler-Maruyama, Milstein, Langevin corrector, reverse-diffusion predictor, EM's
noise-free last step ``em_mean``, EM with Brownian-tree noise ``em_brownian``, and the
Euler-ancestral sigma step with i.i.d. or Brownian-tree noise; the Brownian rows stateless and as
a step of a carried walk, ``*_carried``) and each size, one run times side by side:

* ``eager``: the tutorial's torch expression, noise from ``torch.randn_like``;
* ``compile``: ``torch.compile`` of that same function (one static-shape compile per size), with
  inductor's own random numbers and, on the CPU, where they are slow, also as
  ``compile_aten_rng`` with aten's (``fallback_random``);
* every scoreops kernel backend built for the device (the public op, noise made inside the kernel);
* ``dst.copy_(src)`` of the same size, the device's copy bandwidth.

A fused EM, Milstein or reverse-diffusion step must read x and s and write the result: 12 bytes
per float32 element; the Langevin corrector adds a reduction pass over s: 16 bytes. Achieved GB/s
counts those bytes for every variant, so it is comparable with the copy bandwidth (8 bytes per
element) and the ratio of the two says how close a step comes to the memory floor.

Run ``python benchmarks/bench_steps.py --help``, or ``scoreops bench``.
"""
from __future__ import annotations

import argparse
import math
import sys
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from scoreops import ops
from scoreops.core.brownian import BrownianTree, normals_per_element
from scoreops.samplers.few_step import sigma_grid
from scoreops.sde import VESDE

try:
    from . import common
except ImportError:  # run as a script: python benchmarks/bench_steps.py
    import common

# The VE SDE of the tutorial halfway through a 500-step run: the coefficients only set values.
SIGMA, T, NUM_STEPS, EPS, SNR = 25.0, 0.5, 500, 1e-3, 0.16
# The Euler-ancestral step's grid: 20 Karras levels. Its Brownian row times the step of that grid
# whose increment takes the most node normals (the dearest step of the run).
ANCESTRAL_LEVELS = 20

CPU_SIZES = "64x1x28x28,2^20,2^22,2^24"
CUDA_SIZES = "64x1x28x28,2^20,2^24,2^26,2^28"
QUICK_SIZES = "4x1x8x8,3x5x7"


# --------------------------------------------------------------------------- the eager tutorial steps
def _per_sample(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A (B,) coefficient shaped to broadcast over x, as the tutorial's ``[:, None, None, None]``."""
    return v.reshape(-1, *([1] * (x.dim() - 1)))


def eager_em(x: torch.Tensor, s: torch.Tensor, g: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
    """The tutorial's Euler-Maruyama step ``x + g**2 s dt + sqrt(dt) g z``; g (B,), dt 0-d."""
    g = _per_sample(g, x)
    mean_x = x + (g**2) * s * dt
    return mean_x + torch.sqrt(dt) * g * torch.randn_like(x)


def eager_milstein(x: torch.Tensor, s: torch.Tensor, g: torch.Tensor, dg: torch.Tensor,
                   dt: torch.Tensor) -> torch.Tensor:
    """The paper's Milstein step: EM plus ``1/2 g g' (z**2 - 1) dt``; g, dg (B,), dt 0-d."""
    g, dg = _per_sample(g, x), _per_sample(dg, x)
    z = torch.randn_like(x)
    return x + (g**2) * s * dt + g * torch.sqrt(dt) * z + 0.5 * g * dg * (z * z - 1) * dt


def eager_em_mean(x: torch.Tensor, s: torch.Tensor, g: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
    """The tutorial's last step, the mean ``x + g**2 s dt`` with no noise; g (B,), dt 0-d."""
    return x + (_per_sample(g, x) ** 2) * s * dt


def eager_langevin(x: torch.Tensor, s: torch.Tensor, snr: float) -> torch.Tensor:
    """The tutorial's Langevin corrector step, step size from the batch-mean score norm."""
    grad_norm = torch.norm(s.reshape(s.shape[0], -1), dim=-1).mean()
    noise_norm = math.sqrt(math.prod(x.shape[1:]))
    step_size = 2 * (snr * noise_norm / grad_norm) ** 2
    return x + step_size * s + torch.sqrt(2 * step_size) * torch.randn_like(x)


def eager_ancestral(x: torch.Tensor, d: torch.Tensor, coefs: torch.Tensor) -> torch.Tensor:
    """k-diffusion's Euler-ancestral step ``x + (sigma_down - sigma) (x - d)/sigma + sigma_up z``, as
    ``a x + b d + e z`` with ``coefs = (a, b, e)`` (eta = 1), noise from ``torch.randn_like``."""
    return coefs[0] * x + coefs[1] * d + coefs[2] * torch.randn_like(x)


def eager_reverse_diffusion(x: torch.Tensor, s: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """score_sde's reverse-diffusion predictor for the VE SDE (zero drift); G (B,)."""
    G = _per_sample(G, x)
    f = torch.zeros_like(x)
    rev_f = f - G**2 * s
    x_mean = x - rev_f
    return x_mean + G * torch.randn_like(x)


# --------------------------------------------------------------------------- the cases
@dataclass
class StepInputs:
    """x, s and every coefficient both forms of each step need, on one device."""
    x: torch.Tensor
    s: torch.Tensor
    g: torch.Tensor         # (B,) eager coefficients, as the tutorial computes them per sample
    dg: torch.Tensor
    G: torch.Tensor
    dt: torch.Tensor        # 0-d
    coefs: dict             # name -> (1,) float32: the fused ops' a, b, c, as the samplers hold them
    seed: torch.Tensor      # (1,) int64
    step: torch.Tensor
    ancestral: torch.Tensor  # (3,) float32: (a, b, e) of an Euler-ancestral sigma step
    path: torch.Tensor       # int64 Brownian-tree coordinates of the ancestral grid
    depth: int               # the tree's depth
    path_step: torch.Tensor  # (1,) int64: the grid step the Brownian row times
    t_path: torch.Tensor       # int64 Brownian-tree coordinates of EM's t grid, linspace(1, EPS, NUM_STEPS)
    t_depth: int
    t_path_step: torch.Tensor  # (1,) int64: the t-grid step the em_brownian row times
    carry: torch.Tensor        # x's numel float32: the carried rows' carry (zeros: any values time alike)


def brownian_setup() -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """The ancestral step's grid: ``(coefs (a, b, e), q table, depth, step)`` of the step whose
    increment takes the most node normals."""
    grid = sigma_grid(VESDE(SIGMA), ANCESTRAL_LEVELS)
    tree = BrownianTree.from_grid(grid)
    q = tree.grid_table(grid).tolist()
    counts = [normals_per_element(q[k], q[k + 1], tree.depth) for k in range(ANCESTRAL_LEVELS - 1)]
    k = max(range(len(counts)), key=counts.__getitem__)
    rho = float(grid[k + 1] / grid[k])
    coefs = torch.tensor([rho * rho, 1 - rho * rho, float(grid[k + 1]) * math.sqrt(1 - rho * rho)])
    return coefs, torch.tensor(q), tree.depth, k


def t_brownian_setup() -> tuple[torch.Tensor, int, int]:
    """EM's t grid ``linspace(1, EPS, NUM_STEPS)``: ``(q table, depth, step)`` of its noisy step whose
    increment takes the most node normals."""
    grid = torch.linspace(1.0, EPS, NUM_STEPS, dtype=torch.float64)
    tree = BrownianTree.from_grid(grid)
    q = tree.grid_table(grid).tolist()
    k = max(range(NUM_STEPS - 1), key=lambda k: normals_per_element(q[k], q[k + 1], tree.depth))
    return torch.tensor(q), tree.depth, k


def brownian_normals() -> dict[str, int]:
    """Node normals per element that each Brownian row's timed step draws, stateless and carried."""
    _, path, depth, k = brownian_setup()
    t_path, t_depth, t_k = t_brownian_setup()
    counts = {}
    for row, (q, L, step) in {"ancestral_brownian": (path, depth, k), "em_brownian": (t_path, t_depth, t_k)}.items():
        q_from, q_to = int(q[step]), int(q[step + 1])
        counts[row] = normals_per_element(q_from, q_to, L)
        counts[row + "_carried"] = normals_per_element(q_from, q_to, L, carried=True)
    return counts


def make_inputs(shape: tuple[int, ...], device: torch.device) -> StepInputs:
    """Fresh random x and s of ``shape`` and the VE SDE's coefficients at t = :data:`T`."""
    batch, sde = shape[0], VESDE(SIGMA)
    dt = (1.0 - EPS) / (NUM_STEPS - 1)
    t = torch.tensor([T, T - dt], dtype=torch.float64)
    g, dg = float(sde.diffusion_coeff(t[0])), float(sde.diffusion_coeff_dt(t[0]))
    std, std_prev = sde.marginal_prob_std(t).tolist()
    G = math.sqrt(std**2 - std_prev**2)
    x = torch.randn(shape, device=device) * std
    coefs = {"em_a": g * g * dt, "em_b": g * math.sqrt(dt), "milstein_c": 0.5 * g * dg * dt,
             "rd_a": G * G, "rd_b": G, "zero": 0.0}

    def full(v):
        return torch.full((batch,), v, device=device)

    ancestral, path, depth, path_step = brownian_setup()
    t_path, t_depth, t_path_step = t_brownian_setup()
    return StepInputs(
        x=x, s=-x / std**2, g=full(g), dg=full(dg), G=full(G), dt=torch.tensor(dt, device=device),
        coefs={k: torch.tensor([v], dtype=torch.float32, device=device) for k, v in coefs.items()},
        seed=torch.randint(0, 2**62, (1,), device=device), step=torch.tensor([7], device=device),
        ancestral=ancestral.to(device), path=path.to(device), depth=depth,
        path_step=torch.tensor([path_step], device=device), t_path=t_path.to(device), t_depth=t_depth,
        t_path_step=torch.tensor([t_path_step], device=device), carry=torch.zeros(x.numel(), device=device))


@dataclass(frozen=True)
class StepCase:
    """One update: its eager tutorial form, its fused scoreops form, and the bytes it must move;
    ``baselines``: other cases whose fused ops are timed in the same interleaved rounds, so that
    the row's fused time is compared with theirs side by side."""
    eager: Callable[..., torch.Tensor]
    eager_args: Callable[[StepInputs], tuple]
    fused: Callable[[StepInputs, str], torch.Tensor]
    bytes_per_element: int
    baselines: tuple[str, ...] = ()


def _fused_sde_step(a: str, b: str, c: str, add_noise: bool = True, brownian: bool = False,
                    carried: bool = False) -> Callable[[StepInputs, str], torch.Tensor]:
    def fused(p: StepInputs, backend: str) -> torch.Tensor:
        if brownian:
            return ops.sde_step(p.x, p.s, p.coefs[a], p.coefs[b], p.coefs[c], seed=p.seed, step=p.t_path_step,
                                path=p.t_path, depth=p.t_depth, carry=p.carry if carried else None,
                                backend=backend)
        return ops.sde_step(p.x, p.s, p.coefs[a], p.coefs[b], p.coefs[c], seed=p.seed, step=p.step,
                            add_noise=add_noise, backend=backend)
    return fused


def _fused_ancestral(brownian: bool, carried: bool = False) -> Callable[[StepInputs, str], torch.Tensor]:
    def fused(p: StepInputs, backend: str) -> torch.Tensor:
        path = dict(path=p.path, depth=p.depth, carry=p.carry if carried else None) if brownian else {}
        return ops.sigma_step(p.x, [p.s], p.ancestral, seed=p.seed, step=p.path_step, add_noise=True,
                              backend=backend, **path)
    return fused


def _fused_langevin(p: StepInputs, backend: str) -> torch.Tensor:
    return ops.langevin_correct(p.x, p.s, SNR, seed=p.seed, step=p.step, backend=backend)


CASES: dict[str, StepCase] = {
    "em": StepCase(eager_em, lambda p: (p.x, p.s, p.g, p.dt), _fused_sde_step("em_a", "em_b", "zero"), 12),
    "milstein": StepCase(eager_milstein, lambda p: (p.x, p.s, p.g, p.dg, p.dt),
                         _fused_sde_step("em_a", "em_b", "milstein_c"), 12),
    "langevin": StepCase(eager_langevin, lambda p: (p.x, p.s, SNR), _fused_langevin, 16),
    "reverse_diffusion": StepCase(eager_reverse_diffusion, lambda p: (p.x, p.s, p.G),
                                  _fused_sde_step("rd_a", "rd_b", "zero"), 12),
    # The same bytes without the noise: beside "em" it shows what the in-kernel noise costs.
    "em_mean": StepCase(eager_em_mean, lambda p: (p.x, p.s, p.g, p.dt),
                        _fused_sde_step("em_a", "em_b", "zero", add_noise=False), 12),
    # EM with z the Brownian tree's increment in t, timed beside "em": what the tree costs.
    "em_brownian": StepCase(eager_em, lambda p: (p.x, p.s, p.g, p.dt),
                            _fused_sde_step("em_a", "em_b", "zero", brownian=True), 12, ("em",)),
    # The sigma-space step with its two kinds of noise (s stands in for the denoiser output): the
    # ratio of their fused times is what the Brownian tree costs.
    "ancestral": StepCase(eager_ancestral, lambda p: (p.x, p.s, p.ancestral), _fused_ancestral(False), 12),
    "ancestral_brownian": StepCase(eager_ancestral, lambda p: (p.x, p.s, p.ancestral), _fused_ancestral(True), 12,
                                   ("ancestral",)),
    # The same Brownian steps as one step of a carried walk (the samplers' way): one path's
    # normals instead of two, and the carry read and written (8 more bytes per element); timed
    # beside the i.i.d. and the stateless Brownian step.
    "em_brownian_carried": StepCase(eager_em, lambda p: (p.x, p.s, p.g, p.dt),
                                    _fused_sde_step("em_a", "em_b", "zero", brownian=True, carried=True), 20,
                                    ("em", "em_brownian")),
    "ancestral_brownian_carried": StepCase(eager_ancestral, lambda p: (p.x, p.s, p.ancestral),
                                           _fused_ancestral(True, carried=True), 20,
                                           ("ancestral", "ancestral_brownian")),
}


def fused_backends(device: torch.device) -> list[str]:
    """The scoreops kernel backends built for ``device``: the ones timed by default.

    Left out: ``torch``, the reference implementation of the noise stream in int64 tensor ops
    (100 times slower than the eager step on a CPU: time it with ``--backends torch``), and
    Triton in its CPU interpreter (a test vehicle).
    """
    return [b for b in ops.available_backends(device) if b != "torch" and not (b == "triton" and device.type == "cpu")]


# --------------------------------------------------------------------------- measuring
# torch.compile variants of the eager step: name -> inductor options. By default inductor draws
# randn_like's numbers with its own generator inside the fused kernel; `fallback_random` keeps
# aten's generator (a kernel of its own) and fuses the arithmetic around it. On a CPU the second
# is several times faster, so both are timed and a ratio is taken against the faster.
COMPILE_MODES = {"compile": {}, "compile_aten_rng": {"fallback_random": True}}
# On a GPU inductor's own generator is the fast one, so only it is timed there.
DEVICE_COMPILE_MODES = {"cpu": ("compile", "compile_aten_rng"), "cuda": ("compile",)}


def compiled_step(case: StepCase, args: tuple, options: dict) -> tuple[Callable[[], torch.Tensor] | None, str | None]:
    """``torch.compile`` of the eager step with inductor ``options``, compiled for these inputs:
    ``(call, None)``, or ``(None, why)`` where compiling fails (inductor needs a C++ compiler on
    the CPU), so that the other variants are still measured."""
    compiled = torch.compile(case.eager, dynamic=False, options=options)
    try:
        compiled(*args)
    except Exception as e:  # noqa: BLE001  (inductor raises many kinds; the reason is recorded)
        why = common.error_text(e)
        warnings.warn(f"torch.compile of the eager step failed, its column stays empty: {why}", RuntimeWarning)
        return None, why
    return (lambda: compiled(*args)), None


# The figures of a row and the values they can take (see common.judge): every one is positive and
# finite; an impossible time voids the figures computed from it.
FIGURES = [
    common.Figure("fused_ms", voids=("fused_gbps", "fraction_of_copy", "speedup_vs_eager", "speedup_vs_compile")),
    common.Figure("eager_ms", voids=("eager_gbps", "speedup_vs_eager")),
    *(common.Figure(f"{mode}_ms", voids=("speedup_vs_compile",)) for mode in COMPILE_MODES),
    common.Figure("copy_gbps", voids=("fraction_of_copy",)),
    *(common.Figure(key) for key in ("fused_gbps", "eager_gbps", "fraction_of_copy", "speedup_vs_eager",
                                     "speedup_vs_compile")),
]


def measure_case(name: str, shape: tuple[int, ...], device: torch.device, backends: list[str], *,
                 compile_step: bool, rounds: int, min_run_time: float, max_rel_iqr: float) -> list[dict]:
    """Time one update at one size: eager, compiled, each backend and a copy, interleaved.

    Returns one row per backend, with the eager and compiled times beside it: medians of
    ``rounds`` repeats, the row judged by :func:`common.judge` against ``max_rel_iqr``.
    """
    case, p = CASES[name], make_inputs(shape, device)
    numel = p.x.numel()
    args = case.eager_args(p)
    dst = torch.empty_like(p.x)
    variants = {"eager": lambda: case.eager(*args), "copy": lambda: dst.copy_(p.x)}
    compile_errors = {}
    if compile_step:
        torch._dynamo.reset()  # fresh static-shape compiles per size, within dynamo's recompile limit
        for mode in DEVICE_COMPILE_MODES[device.type]:
            compiled, why = compiled_step(case, args, COMPILE_MODES[mode])
            if compiled is None:
                compile_errors[mode] = why
            else:
                variants[mode] = compiled
    for backend in backends:
        variants[backend] = lambda backend=backend: case.fused(p, backend)
        for base in case.baselines:
            variants[f"{base} {backend}"] = lambda base=base, backend=backend: CASES[base].fused(p, backend)
    for fn in variants.values():
        fn()  # warm-up: kernel loading, allocator
    timings = common.median_times(variants, rounds=rounds, min_run_time=min_run_time)
    times = {variant: timing.median for variant, timing in timings.items()}

    step_bytes = case.bytes_per_element * numel
    copy_gbps = common.gb_per_s(common.COPY_BYTES_PER_ELEMENT * numel, times["copy"])
    compiled = [mode for mode in COMPILE_MODES if mode in times]
    best_compile = min(times[mode] for mode in compiled) if compiled else None
    rows = []
    for backend in backends:
        fused = times[backend]
        row = {
            "op": name, "shape": common.format_shape(shape), "numel": numel, "backend": backend,
            "bytes_per_element": case.bytes_per_element,
            "fused_ms": 1e3 * fused, "eager_ms": 1e3 * times["eager"],
            **{f"{mode}_ms": 1e3 * times[mode] if mode in times else None for mode in COMPILE_MODES},
            "fused_gbps": common.gb_per_s(step_bytes, fused),
            "eager_gbps": common.gb_per_s(step_bytes, times["eager"]),
            "copy_gbps": copy_gbps,
            "fraction_of_copy": common.ratio(common.gb_per_s(step_bytes, fused), copy_gbps),
            "speedup_vs_eager": common.ratio(times["eager"], fused),
            "speedup_vs_compile": None if best_compile is None else common.ratio(best_compile, fused),
            "time_vs_baselines": {base: common.ratio(fused, times[f"{base} {backend}"]) for base in case.baselines}
            or None,
            "compile_errors": compile_errors,
        }
        used = {"fused": timings[backend], "eager": timings["eager"], "copy": timings["copy"],
                **{mode: timings[mode] for mode in compiled},
                **{base: timings[f"{base} {backend}"] for base in case.baselines}}
        rows.append(common.judge(row, used, FIGURES, max_rel_iqr))
    return rows


COLUMNS = [
    common.Column("op", "op"), common.Column("shape", "shape"), common.Column("numel", "elements", common.format_count),
    common.Column("backend", "backend"),
    common.Column("fused_ms", "fused ms", "{:.3g}"), common.Column("eager_ms", "eager ms", "{:.3g}"),
    common.Column("compile_ms", "compile ms", "{:.3g}"),
    common.Column("compile_aten_rng_ms", "compile (aten rng) ms", "{:.3g}"),
    common.Column("fused_gbps", "fused GB/s", "{:.3g}"), common.Column("copy_gbps", "copy GB/s", "{:.3g}"),
    common.Column("fraction_of_copy", "of copy", "{:.0%}"), common.Column("speedup_vs_eager", "x eager", "{:.2f}"),
    common.Column("speedup_vs_compile", "x compile", "{:.2f}"),
    common.Column("time_vs_baselines", "time vs", lambda v: ", ".join(f"{k} {r:.3g}x" for k, r in v.items())),
    *common.RELIABILITY_COLUMNS,
    common.Column("error", "error"),
]

NOTES = """
`fused`: the scoreops op on that backend (public call, input checks included; noise made in the
kernel). `eager`: the tutorial's step in torch ops with `torch.randn_like`. `compile`:
`torch.compile(eager step, dynamic=False)`, inductor's own random numbers fused into its kernel;
`compile (aten rng)` (CPU only): the same with `fallback_random=True`, aten's `randn_like` beside
fused arithmetic. Each compiled per size and warmed up. `em_mean`: EM's last step, the mean
without noise, the same bytes as `em`. `em_brownian`: the `em` step with z the Brownian tree's
increment in t (`noise="brownian"` of the t-grid samplers), at the step of the tutorial's 500-point
grid that takes the most node normals. `ancestral`: k-diffusion's Euler-ancestral step as one
`sigma_step` (a x + b D + e z); `ancestral_brownian`: the same step with z the Brownian tree's
increment (`noise="brownian"`), at the step of a 20-level Karras grid that takes the most node
normals; both against the same eager step with `torch.randn_like`. `*_carried`: the same Brownian
step as one step of a carried walk, as the samplers take it (the carry buffer holds the part of the
increment the previous step walked: one tree path's normals, at most L + 1, instead of two; 8 more
bytes per element for the carry). `time vs`: the row's fused time over the fused times of the
steps named there (the i.i.d. step, and for a carried row the stateless Brownian step), all timed
in the same interleaved rounds; the settings' `brownian_normals_per_element` gives each Brownian
row's node normals per element. `error`: why a case has no times.
GB/s counts the bytes the fused op must move (12 per element; 16 for the Langevin corrector,
whose norms take a pass of their own); `copy GB/s` is `dst.copy_(src)` of the same size (8 bytes
per element), the floor of a memory-bound step, and `of copy` is fused GB/s over copy GB/s; where
the last-level cache holds the tensors (see the caches above), that floor is the cache's.
`x eager` is the eager time over the fused time, `x compile` the faster compiled time over it.

Every time is the median of interleaved rounds (one sample per round; `rounds` in the settings),
and every ratio is taken between medians. `rel. IQR`: the widest relative interquartile range
((75th - 25th percentile) / median of the rounds) of the timings a row uses (fused, eager, copy,
compiled). `reliable`: **no** when one of them spreads wider than `max_rel_iqr` of the settings
or a figure is impossible (a time or ratio that is not positive and finite), with the reasons;
an impossible figure prints as `invalid` (its value stays in the JSON's `impossible`). An
unreliable row is not a result.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench_steps", description=__doc__.split("\n\n")[0])
    common.add_common_arguments(parser)
    parser.add_argument("--sizes", default=None,
                        help=f"comma list of shapes (64x1x28x28) or element counts (2^24); default {CPU_SIZES} "
                             f"on the CPU, {CUDA_SIZES} on a GPU")
    parser.add_argument("--ops", default=",".join(CASES), help="comma list of updates (default: %(default)s)")
    parser.add_argument("--backends", default=None,
                        help="comma list of scoreops backends (default: every kernel backend built for the device)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="time torch.compile of the eager step too (default: on)")
    return parser


def main(argv: list[str] | None = None) -> tuple:
    """Run the step benchmark from command-line arguments; returns the (JSON, markdown) paths written."""
    args = build_parser().parse_args(argv)
    device, timing = common.prepare(args)
    default_sizes = QUICK_SIZES if args.quick else CUDA_SIZES if device.type == "cuda" else CPU_SIZES
    shapes = [common.parse_shape(s) for s in common.split_list(args.sizes or default_sizes)]
    names = common.split_list(args.ops)
    unknown = sorted(set(names) - set(CASES))
    if unknown:
        raise ValueError(f"--ops: unknown updates {unknown}; choose from {list(CASES)}")
    backends = common.split_list(args.backends) if args.backends else fused_backends(device)
    if not backends:
        raise RuntimeError(f"no scoreops kernel backend is built for {device.type} (is scoreops._C built?); "
                           "pass --backends torch to time the reference alone")
    for backend in backends:
        ops.resolve_backend(backend, device)  # a clear error now rather than after minutes of timing

    info = common.machine_info(device)
    print(common.describe_machine(info))
    print(common.markdown_table([], COLUMNS), flush=True)
    settings = {"sizes": [common.format_shape(s) for s in shapes], "ops": names, "backends": backends,
                "compile": args.compile, "quick": args.quick, "sigma": SIGMA, "t": T, "num_steps": NUM_STEPS,
                "snr": SNR, "brownian_normals_per_element": brownian_normals(), **timing,
                **common.reliability_settings(args)}
    title = "Step updates: fused scoreops ops vs the eager tutorial step"
    rows = []
    for shape in shapes:
        for name in names:
            try:
                case_rows = measure_case(name, shape, device, backends, compile_step=args.compile,
                                         max_rel_iqr=args.max_rel_iqr, **timing)
            except Exception as e:  # noqa: BLE001  (one failing case, a kernel or memory, must not cost the rest)
                warnings.warn(f"{name} at {common.format_shape(shape)} failed: {common.error_text(e)}", RuntimeWarning)
                case_rows = [{"op": name, "shape": common.format_shape(shape), "error": common.error_text(e)}]
            print(common.markdown_table(case_rows, COLUMNS, header=False), flush=True)
            rows += case_rows
            common.write_results(args.out, "steps", title, info, settings, rows, COLUMNS, NOTES, finished=False)
    paths = common.write_results(args.out, "steps", title, info, settings, rows, COLUMNS, NOTES)
    print(common.describe_reliability(common.reliability_summary(rows, args.max_rel_iqr), args.max_rel_iqr))
    print("wrote", *paths, flush=True)
    return paths


if __name__ == "__main__":
    main(sys.argv[1:])
