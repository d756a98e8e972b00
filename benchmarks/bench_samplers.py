"""Whole samplers: the scoreops samplers against the eager tutorial samplers, end to end.

For each score network (the tutorial's ScoreNet at 28x28, and a tiny one where per-step overhead
dominates) and each sampler (EM, Milstein, PC, probability-flow ODE), one run times side by side:

* ``eager``: the tutorial-style sampler of :mod:`scoreops.evaluation.reference` (``torch.randn_like`` noise;
  the ODE through scipy's ``solve_ivp`` RK45 with a numpy round trip per evaluation);
* ``scoreops``: the scoreops sampler (fused step ops) in its plain Python loop;
* ``scoreops+graph``: the same with the whole loop replayed as one CUDA graph (GPU only).

Every variant starts from the same x(1); both ODE samplers get the same tolerances. Reported:
seconds per run, samples per second, the speed-up over eager, and how a run splits between the
score model (one call timed alone, times the number of calls), the step updates (timed alone
likewise) and the rest, the per-step overhead. The networks are freshly initialised: timing does
not depend on training, though the ODE's step count does.

Run ``python benchmarks/bench_samplers.py --help``, or ``scoreops bench``.
"""
from __future__ import annotations

import argparse
import functools
import sys
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from scoreops import ops, samplers
from scoreops.evaluation import reference
from scoreops.sde import VESDE
from scoreops.training.models import ScoreNet, model_options

try:
    from . import common
    from .bench_steps import CASES, make_inputs
except ImportError:  # run as a script: python benchmarks/bench_samplers.py
    import common
    from bench_steps import CASES, make_inputs

SHAPE = (1, 28, 28)
SIGMA = 25.0
# The tutorial's ScoreNet, and a tiny one whose step costs little beside the Python and launches around it.
MODELS = {"tutorial": {}, "tiny": {"channels": (8, 16), "embed_dim": 16}}


@dataclass(frozen=True)
class SDESampler:
    """An SDE sampler in both forms, and the step updates (``bench_steps.CASES``) each step makes."""
    eager: Callable
    fused: Callable
    updates: tuple[str, ...]


SDE_SAMPLERS = {
    "em": SDESampler(reference.em_sampler, samplers.em_sample, ("em",)),
    "milstein": SDESampler(reference.milstein_sampler, samplers.milstein_sample, ("milstein",)),
    "pc": SDESampler(reference.pc_sampler, samplers.pc_sample, ("langevin", "em")),
}
SAMPLERS = (*SDE_SAMPLERS, "ode")

# Per device: batch, steps per model, ODE tolerance (atol = rtol) and timed runs per variant. The GPU
# runs the tutorial's own settings; on a 2-core CPU the tutorial's 1e-5 costs ~900 score evaluations
# per ODE run, so the CPU default is 1e-3 (~230), the same for both ODE samplers. A spread needs
# common.MIN_REPEATS runs, the smoke run's count.
DEFAULTS = {
    "cpu": dict(batch=16, steps={"tutorial": 50, "tiny": 200}, tol=1e-3, repeats=5),
    "cuda": dict(batch=64, steps={"tutorial": 500, "tiny": 500}, tol=1e-5, repeats=5),
    "quick": dict(batch=2, steps={"tutorial": 3, "tiny": 4}, tol=1e-2, repeats=common.MIN_REPEATS),
}


def build_model(name: str, sde: VESDE, device: torch.device) -> ScoreNet:
    """The score network ``name`` of :data:`MODELS`, freshly initialised (seed 0), in eval mode."""
    torch.manual_seed(0)
    return ScoreNet(sde.marginal_prob_std, **model_options("tutorial", **MODELS[name])).to(device).eval()


def _no_grad(fn: Callable) -> Callable[[], object]:
    def call():
        with torch.no_grad():
            return fn()
    return call


# --------------------------------------------------------------------------- one model, one sampler
def sampler_runs(sampler: str, model: ScoreNet, sde: VESDE, x_T: torch.Tensor, steps: int, tol: float,
                 backend: str) -> dict[str, Callable[[], object]]:
    """The variants of ``sampler`` as functions of no arguments: eager, scoreops, scoreops+graph."""
    device = x_T.device
    if sampler == "ode":
        return {
            "eager": functools.partial(reference.ode_sampler, model, sde, atol=tol, rtol=tol, device=device, z=x_T,
                                       full_output=True),
            "scoreops": functools.partial(samplers.ode_sample, model, sde, atol=tol, rtol=tol, device=device, z=x_T,
                                          backend=backend, full_output=True),
        }
    spec = SDE_SAMPLERS[sampler]
    runs = {"eager": functools.partial(spec.eager, model, sde, num_steps=steps, device=device, x_T=x_T)}
    fused = functools.partial(spec.fused, model, sde, num_steps=steps, device=device, x_T=x_T, seed=0,
                              backend=backend)
    runs["scoreops"] = functools.partial(fused, cuda_graph=False)
    if device.type == "cuda" and backend in ("cuda", "triton"):
        runs["scoreops+graph"] = functools.partial(fused, cuda_graph=True)
    return runs


def part_times(sampler: str, model: ScoreNet, x_T: torch.Tensor, variants: list[str], backend: str,
               timing: dict) -> dict[str, tuple[common.Timing, dict[str, common.Timing]]]:
    """Per variant, the timing of one model call and of each update of one step (none for the ODE),
    the latter by update name.

    The graph variant's parts are timed as CUDA-graph replays, as they run inside its loop.
    """
    p = make_inputs(tuple(x_T.shape), x_T.device)
    t = torch.full((x_T.shape[0],), 0.5, device=x_T.device)
    updates = SDE_SAMPLERS[sampler].updates if sampler in SDE_SAMPLERS else ()
    fns = {}
    for variant in variants:
        model_call = _no_grad(lambda: model(p.x, t))
        if variant == "eager":
            update_calls = [functools.partial(CASES[u].eager, *CASES[u].eager_args(p)) for u in updates]
        else:
            update_calls = [functools.partial(CASES[u].fused, p, backend) for u in updates]
        if variant.endswith("+graph"):
            model_call, update_calls = common.cuda_graphed(model_call), [common.cuda_graphed(u) for u in update_calls]
        fns[f"{variant}/model"] = model_call
        for i, update in enumerate(update_calls):
            fns[f"{variant}/update{i}"] = update
    for fn in fns.values():
        fn()
    times = common.median_times(fns, **timing)
    return {v: (times[f"{v}/model"], {u: times[f"{v}/update{i}"] for i, u in enumerate(updates)}) for v in variants}


# The figures of a row and the values they can take (see common.judge): the parts are times, the
# overhead what the run leaves of them, and no part is more than the whole run; an impossible time
# voids the figures computed from it.
FIGURES = [
    common.Figure("seconds", voids=("samples_per_s", "speedup_vs_eager", "model_share", "update_share",
                                    "overhead_share")),
    common.Figure("samples_per_s"), common.Figure("speedup_vs_eager"),
    common.Figure("model_s", voids=("model_share",)), common.Figure("update_s", voids=("update_share",)),
    common.Figure("overhead_s", strict=False, voids=("overhead_share", "overhead_per_step_ms")),
    common.Figure("model_share", high=1.0), common.Figure("update_share", high=1.0),
]


def measure_sampler(sampler: str, model_name: str, model: ScoreNet, sde: VESDE, x_T: torch.Tensor, steps: int,
                    tol: float, backend: str, repeats: int, timing: dict, max_rel_iqr: float) -> list[dict]:
    """Time every variant of one sampler on one model; one row per variant.

    Runs are timed ``repeats`` times, the parts in ``timing["rounds"]`` rounds; every figure comes
    from medians, and each row is judged by :func:`common.judge` against ``max_rel_iqr``.
    """
    runs = sampler_runs(sampler, model, sde, x_T, steps, tol, backend)
    results, failed = {}, {}
    for name, run in runs.items():  # warm-up; graphs are captured here
        try:
            results[name] = run()
        except Exception as e:  # noqa: BLE001  (a failed capture or kernel must not cost the other variants)
            if name == "eager":
                raise
            warnings.warn(f"{model_name} {sampler} {name} failed: {common.error_text(e)}", RuntimeWarning)
            failed[name] = common.error_text(e)
    runs = {name: run for name, run in runs.items() if name not in failed}
    run_timings = common.median_run_times(runs, x_T.device, repeats=repeats)
    seconds = {name: t.median for name, t in run_timings.items()}
    parts = part_times(sampler, model, x_T, list(runs), backend, timing)
    batch, rows = x_T.shape[0], []
    for name in runs:
        if sampler == "ode":
            nfe, loop_steps = results[name].nfe, results[name].n_accepted
            model_calls = nfe
        else:
            loop_steps = steps
            model_calls = nfe = steps * len(SDE_SAMPLERS[sampler].updates)
        model_call, update_calls = parts[name]
        model_s = model_call.median * model_calls
        update_s = sum(t.median for t in update_calls.values()) * loop_steps if update_calls else None
        # Parts timed alone, on a loaded machine, can add up to more than the run: judge() marks that.
        overhead_s = seconds[name] - model_s - (update_s or 0.0)
        row = {
            "model": model_name, "sampler": sampler, "variant": name, "backend": None if name == "eager" else backend,
            "batch": batch, "steps": loop_steps, "nfe": nfe, "tol": tol if sampler == "ode" else None,
            "seconds": seconds[name], "samples_per_s": common.ratio(batch, seconds[name]),
            "speedup_vs_eager": common.ratio(seconds["eager"], seconds[name]),
            "model_s": model_s, "update_s": update_s, "overhead_s": overhead_s,
            "model_share": common.ratio(model_s, seconds[name]),
            "update_share": None if update_s is None else common.ratio(update_s, seconds[name]),
            "overhead_share": common.ratio(overhead_s, seconds[name]),
            "overhead_per_step_ms": 1e3 * overhead_s / loop_steps,
        }
        used = {"run": run_timings[name], **({"eager run": run_timings["eager"]} if name != "eager" else {}),
                "model call": model_call, **{f"{u} update": t for u, t in update_calls.items()}}
        rows.append(common.judge(row, used, FIGURES, max_rel_iqr))
    rows += [{"model": model_name, "sampler": sampler, "variant": name, "error": why} for name, why in failed.items()]
    return rows


COLUMNS = [
    common.Column("model", "model"), common.Column("sampler", "sampler"), common.Column("variant", "variant"),
    common.Column("batch", "batch"), common.Column("steps", "steps"), common.Column("nfe", "nfe"),
    common.Column("seconds", "s / run", "{:.3g}"), common.Column("samples_per_s", "samples/s", "{:.3g}"),
    common.Column("speedup_vs_eager", "x eager", "{:.2f}"), common.Column("model_share", "model", "{:.0%}"),
    common.Column("update_share", "update", "{:.0%}"), common.Column("overhead_share", "overhead", "{:.0%}"),
    common.Column("overhead_per_step_ms", "overhead / step ms", "{:.3g}"), *common.RELIABILITY_COLUMNS,
    common.Column("error", "error"),
]

NOTES = """
`eager`: the tutorial-style samplers of `scoreops.evaluation.reference` (the ODE: scipy `solve_ivp` RK45,
float64, a numpy round trip per evaluation). `scoreops`: the fused samplers, plain loop;
`scoreops+graph`: the loop as one CUDA graph. Same x(1) for all; the ODE samplers share atol =
rtol. `steps`: loop steps (accepted steps for the ODE); `nfe`: score-model calls. `model` and
`update`: one call timed alone (as a graph replay for the graph variant) times the number of
calls, as shares of the run; `overhead`: the rest (for the ODE it includes the Runge-Kutta
arithmetic). Freshly initialised networks. `error`: why a variant or a sampler has no times.

Every time is the median of its repeats (`repeats` interleaved runs; the parts in `rounds`
interleaved rounds), and every share and ratio is taken between medians. `rel. IQR`: the widest
relative interquartile range ((75th - 25th percentile) / median of the repeats) of the timings a
row uses (its runs, the eager runs, the model call, the updates). `reliable`: **no** when one of
them spreads wider than `max_rel_iqr` of the settings or a figure is impossible (parts adding up
to more than the run, a negative overhead, a time or ratio that is not positive and finite), with
the reasons; an impossible figure prints as `invalid` (its value stays in the JSON's
`impossible`). An unreliable row is not a result.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench_samplers", description=__doc__.split("\n\n")[0])
    common.add_common_arguments(parser)
    parser.add_argument("--models", default=",".join(MODELS), help="comma list of networks (default: %(default)s)")
    parser.add_argument("--samplers", default=",".join(SAMPLERS), help="comma list of samplers (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=None, help="samples per run (default 16 on the CPU, 64 on a GPU)")
    parser.add_argument("--steps", type=int, default=None,
                        help="SDE sampler steps for every network (default: CPU tutorial 50, tiny 200; GPU 500)")
    parser.add_argument("--tol", type=float, default=None,
                        help="ODE atol = rtol for both ODE samplers (default 1e-3 on the CPU, 1e-5 on a GPU)")
    parser.add_argument("--repeats", type=int, default=None,
                        help=f"timed runs per variant (default 5, {common.MIN_REPEATS} with --quick; "
                             f"at least {common.MIN_REPEATS})")
    parser.add_argument("--backend", default="auto", help="scoreops backend (default: the fastest built one)")
    return parser


def _choices(text: str, allowed, flag: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = sorted(set(names) - set(allowed))
    if unknown or not names:
        raise ValueError(f"{flag}: unknown or no names {unknown}; choose from {list(allowed)}")
    return names


def main(argv: list[str] | None = None) -> tuple:
    """Run the sampler benchmark from command-line arguments; returns the (JSON, markdown) paths written."""
    args = build_parser().parse_args(argv)
    device, timing = common.prepare(args)
    defaults = DEFAULTS["quick" if args.quick else device.type]
    batch = args.batch if args.batch is not None else defaults["batch"]
    tol = args.tol if args.tol is not None else defaults["tol"]
    repeats = args.repeats if args.repeats is not None else defaults["repeats"]
    model_names = _choices(args.models, MODELS, "--models")
    sampler_names = _choices(args.samplers, SAMPLERS, "--samplers")
    steps = {m: args.steps if args.steps is not None else defaults["steps"][m] for m in model_names}
    if batch < 1 or min(steps.values()) < 2 or not tol > 0 or repeats < common.MIN_REPEATS:
        raise ValueError(f"need --batch >= 1, --steps >= 2, --tol > 0 and --repeats >= {common.MIN_REPEATS}; "
                         f"got {batch}, {min(steps.values())}, {tol}, {repeats}")
    backend = ops.resolve_backend(args.backend, device)

    info = common.machine_info(device)
    print(common.describe_machine(info))
    print(common.markdown_table([], COLUMNS), flush=True)
    sde = VESDE(SIGMA)
    x_T = sde.prior_sample(batch, SHAPE, seed=0, device=device)
    settings = {"models": {m: model_options("tutorial", **MODELS[m]) for m in model_names}, "samplers": sampler_names,
                "shape": SHAPE, "sigma": SIGMA, "batch": batch, "steps": steps, "ode_tol": tol, "backend": backend,
                "repeats": repeats, "quick": args.quick, **timing, **common.reliability_settings(args)}
    title = "Samplers end to end: scoreops vs the eager tutorial samplers"
    rows = []
    for model_name in model_names:
        model = build_model(model_name, sde, device)
        for sampler in sampler_names:
            try:
                sampler_rows = measure_sampler(sampler, model_name, model, sde, x_T, steps[model_name], tol, backend,
                                               repeats, timing, args.max_rel_iqr)
            except Exception as e:  # noqa: BLE001  (one failing sampler must not cost the rest of the run)
                warnings.warn(f"{model_name} {sampler} failed: {common.error_text(e)}", RuntimeWarning)
                sampler_rows = [{"model": model_name, "sampler": sampler, "error": common.error_text(e)}]
            print(common.markdown_table(sampler_rows, COLUMNS, header=False), flush=True)
            rows += sampler_rows
            common.write_results(args.out, "samplers", title, info, settings, rows, COLUMNS, NOTES, finished=False)
        samplers.clear_graph_cache()
    paths = common.write_results(args.out, "samplers", title, info, settings, rows, COLUMNS, NOTES)
    print(common.describe_reliability(common.reliability_summary(rows, args.max_rel_iqr), args.max_rel_iqr))
    print("wrote", *paths, flush=True)
    return paths


if __name__ == "__main__":
    main(sys.argv[1:])
