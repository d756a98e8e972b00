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

With ``--model-variants`` it times instead the score model itself, the same weights run eager,
through ``torch.compile`` (default and max-autotune modes) and in channels_last memory format, at
several batch sizes: the first call (the compile), one forward pass, and a short ``em_sample`` run.

Run ``python benchmarks/bench_samplers.py --help``, or ``scoreops bench``.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import sys
import time
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


# --------------------------------------------------------------------------- score-model variants
# --model-variants: the ScoreNets timed, as (preset, overrides, image side): the digits preset at
# the 16x16 it trains on, the tutorial's at MNIST's 28x28, and the tiny net for smoke runs.
VARIANT_NETS = {"digits": ("digits", {}, 16), "tutorial": ("tutorial", {}, 28),
                "tiny": ("tutorial", MODELS["tiny"], 28)}


@dataclass(frozen=True)
class ModelVariant:
    """One way to run the same weights: a ``torch.compile`` mode (None: eager) and the memory format."""
    compile_mode: str | None
    channels_last: bool


MODEL_VARIANTS = {
    "eager": ModelVariant(None, False),
    "channels_last": ModelVariant(None, True),
    "compile": ModelVariant("default", False),
    "compile+channels_last": ModelVariant("default", True),
    "compile-max-autotune": ModelVariant("max-autotune-no-cudagraphs", False),
}

# --model-variants' defaults, full and --quick: batches, networks, sampler steps, timed sampler runs.
VARIANT_DEFAULTS = {
    "full": dict(batches=(64, 512), nets=("digits", "tutorial"), steps=10, repeats=5),
    "quick": dict(batches=(2,), nets=("tiny",), steps=3, repeats=common.MIN_REPEATS),
}


class ChannelsLast(torch.nn.Module):
    """A copy of ``model`` with its weights in channels_last memory format, called as the samplers
    call a model: ``x`` (B, C, H, W) is converted on the way in, the score made contiguous on the
    way out (the fused step ops take contiguous tensors). ``model`` itself is left as it was."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = copy.deepcopy(model).to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.model(x.contiguous(memory_format=torch.channels_last), t).contiguous()


def model_variant(model: torch.nn.Module, spec: ModelVariant) -> Callable:
    """``model`` run as ``spec`` says; compiled lazily, on its first call."""
    net = ChannelsLast(model) if spec.channels_last else model
    return net if spec.compile_mode is None else torch.compile(net, mode=spec.compile_mode)


def inductor_startup() -> float | None:
    """Seconds to compile a trivial function: inductor's once-per-process start (imports, C++
    toolchain checks), kept apart so that it is not charged to the first model variant compiled.
    None where compiling fails; the compiled variants then record why."""
    torch._dynamo.reset()
    start = time.perf_counter()
    try:
        torch.compile(lambda v: v * 2 + 1)(torch.ones(8))
    except Exception:  # noqa: BLE001
        return None
    finally:
        torch._dynamo.reset()
    return time.perf_counter() - start


VARIANT_FIGURES = [
    common.Figure("first_call_s"),
    common.Figure("forward_ms", voids=("forward_speedup", "break_even_calls")), common.Figure("forward_speedup"),
    common.Figure("run_s", voids=("run_speedup",)), common.Figure("run_speedup"),
]


def measure_model_variants(net_name: str, model: torch.nn.Module, sde: VESDE, x_T: torch.Tensor,
                           variants: list[str], steps: int, backend: str, repeats: int, timing: dict,
                           max_rel_iqr: float) -> list[dict]:
    """Time the variants of one network at one batch, side by side; one row per variant.

    Per variant: the first call (for a compiled one, the compile; inductor's caches are off, so it
    is a cold compile), one forward pass ``model(x, t)`` under ``torch.no_grad`` (``timing["rounds"]``
    interleaved rounds), and ``repeats`` interleaved runs of ``em_sample`` with ``steps`` steps. ``x_T``
    (B, C, H, W) is both the forward pass's input and the runs' x(1). A variant that fails to compile
    or run gets an error row; eager failing raises.
    """
    device, batch = x_T.device, x_T.shape[0]
    t = torch.full((batch,), 0.5, device=device)
    torch._dynamo.reset()  # fresh static-shape compiles per network and batch, within dynamo's cache limit
    nets, first_call, rel_diff, failed = {}, {}, {}, {}
    with torch.no_grad():
        reference_out = model(x_T, t)
        for name in variants:
            try:
                net = model_variant(model, MODEL_VARIANTS[name])
                common.synchronize(device)
                start = time.perf_counter()
                out = net(x_T, t)
                common.synchronize(device)
                first_call[name] = time.perf_counter() - start
            except Exception as e:  # noqa: BLE001  (a failed compile must not cost the other variants)
                if name == "eager":
                    raise
                warnings.warn(f"{net_name} batch {batch} {name} failed: {common.error_text(e)}", RuntimeWarning)
                failed[name] = common.error_text(e)
                continue
            nets[name] = net
            # The same function of the same weights: a variant that computes something else is no result.
            rel_diff[name] = float((out - reference_out).abs().max() / reference_out.abs().max())
    forward = common.median_times({name: _no_grad(functools.partial(net, x_T, t)) for name, net in nets.items()},
                                  **timing)
    runs = {name: functools.partial(samplers.em_sample, net, sde, num_steps=steps, device=device, x_T=x_T, seed=0,
                                    backend=backend, cuda_graph=False) for name, net in nets.items()}
    for run in runs.values():  # warm-up, outside the timings
        run()
    run_timings = common.median_run_times(runs, device, repeats=repeats)
    eager_forward, eager_run = forward["eager"].median, run_timings["eager"].median
    rows = []
    for name in nets:
        forward_s, run_s = forward[name].median, run_timings[name].median
        saving = eager_forward - forward_s
        row = {
            "model": net_name, "variant": name, "compile_mode": MODEL_VARIANTS[name].compile_mode,
            "channels_last": MODEL_VARIANTS[name].channels_last, "batch": batch, "steps": steps,
            "first_call_s": first_call[name], "forward_ms": 1e3 * forward_s,
            "forward_speedup": common.ratio(eager_forward, forward_s),
            # Model calls after which the first call's extra time (the compile) is paid back; a first
            # call no slower than the others (timing noise) is paid back at once.
            "break_even_calls": (max(0.0, first_call[name] - forward_s) / saving
                                 if name != "eager" and saving > 0 else None),
            "run_s": run_s, "run_speedup": common.ratio(eager_run, run_s), "max_rel_diff": rel_diff[name],
        }
        used = {"model call": forward[name], "run": run_timings[name]}
        if name != "eager":
            used.update({"eager model call": forward["eager"], "eager run": run_timings["eager"]})
        rows.append(common.judge(row, used, VARIANT_FIGURES, max_rel_iqr))
    rows += [{"model": net_name, "variant": name, "batch": batch, "error": why} for name, why in failed.items()]
    return rows


VARIANT_COLUMNS = [
    common.Column("model", "model"), common.Column("batch", "batch"), common.Column("variant", "variant"),
    common.Column("first_call_s", "first call s", "{:.3g}"), common.Column("forward_ms", "forward ms", "{:.3g}"),
    common.Column("forward_speedup", "x eager fwd", "{:.2f}"),
    common.Column("break_even_calls", "pays off after (calls)", "{:.0f}"),
    common.Column("steps", "steps"), common.Column("run_s", "s / run", "{:.3g}"),
    common.Column("run_speedup", "x eager run", "{:.2f}"), common.Column("max_rel_diff", "max rel. diff", "{:.1e}"),
    *common.RELIABILITY_COLUMNS, common.Column("error", "error"),
]

VARIANT_NOTES = """
Variants of the same freshly initialised weights: `eager`; `channels_last` (a copy of the model in
channels_last memory format, its input converted and its output made contiguous on each call);
`compile` and `compile+channels_last`: `torch.compile(model)` in the default mode;
`compile-max-autotune`: `mode="max-autotune-no-cudagraphs"`. Everything runs under `torch.no_grad`,
as the samplers do.

`first call s`: the variant's first call, one measurement; for a compiled variant it is the cold
compile (inductor's caches off; inductor's once-per-process start, timed apart, is
`inductor_startup_s` of the settings). `forward ms`: one call `model(x, t)` at the batch.
`x eager fwd`, `x eager run`: eager's median over the variant's. `pays off after (calls)`: model
calls after which the first call's extra time is paid back by the faster calls,
(first call - forward) / (eager forward - forward); `-` where the variant is not faster than eager
(it never pays off) and for eager. `s / run`: `scoreops.em_sample` with `steps` steps (one model call
per step), compile excluded. `max rel. diff`: max |variant - eager| / max |eager| of one forward pass.

Every time but the first call is the median of its repeats (the forward pass in `rounds`
interleaved rounds, the runs in `repeats` interleaved runs). `rel. IQR` and `reliable` as in the
sampler table: a row is unreliable when one of its timings (its own and eager's forward pass and
run) spreads wider than `max_rel_iqr`, or a figure is impossible.
"""


def run_model_variants(args: argparse.Namespace, device: torch.device, timing: dict) -> tuple:
    """The --model-variants mode of :func:`main`; returns the (JSON, markdown) paths written."""
    defaults = VARIANT_DEFAULTS["quick" if args.quick else "full"]
    batches = _batches(args.batches) if args.batches else list(defaults["batches"])
    nets = _choices(args.nets, VARIANT_NETS, "--nets") if args.nets else list(defaults["nets"])
    variants = _choices(args.variants, MODEL_VARIANTS, "--variants") if args.variants else list(MODEL_VARIANTS)
    if "eager" not in variants:
        variants.insert(0, "eager")  # every ratio is to eager
    steps = args.steps if args.steps is not None else defaults["steps"]
    repeats = args.repeats if args.repeats is not None else defaults["repeats"]
    if min(batches, default=0) < 1 or steps < 2 or repeats < common.MIN_REPEATS:
        raise ValueError(f"need --batches >= 1, --steps >= 2 and --repeats >= {common.MIN_REPEATS}; "
                         f"got {batches}, {steps}, {repeats}")
    backend = ops.resolve_backend(args.backend, device)
    title = "Score model variants: torch.compile and channels_last against eager"
    info = common.machine_info(device)
    print(common.describe_machine(info))
    from torch._inductor import config as inductor_config  # imported here: the sampler table never compiles

    # Cold compiles, so that a run's compile times do not depend on what earlier runs left in the cache.
    with inductor_config.patch(force_disable_caches=True), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "dynamo_pgo force disabled")  # says only that the caches are off
        startup = inductor_startup() if any(MODEL_VARIANTS[v].compile_mode for v in variants) else None
        settings = {"nets": {n: {"options": model_options(VARIANT_NETS[n][0], **VARIANT_NETS[n][1]),
                                 "shape": [1, VARIANT_NETS[n][2], VARIANT_NETS[n][2]]} for n in nets},
                    "variants": {v: dataclasses.asdict(MODEL_VARIANTS[v]) for v in variants}, "batches": batches,
                    "sampler": "em_sample", "steps": steps, "sigma": SIGMA, "backend": backend, "repeats": repeats,
                    "inductor_startup_s": startup, "inductor_caches": False, "quick": args.quick, **timing,
                    **common.reliability_settings(args)}
        print(common.markdown_table([], VARIANT_COLUMNS), flush=True)
        sde, rows = VESDE(SIGMA), []
        for net_name in nets:
            preset, overrides, side = VARIANT_NETS[net_name]
            torch.manual_seed(0)
            model = ScoreNet(sde.marginal_prob_std, **model_options(preset, **overrides)).to(device).eval()
            for batch in batches:
                x_T = sde.prior_sample(batch, (1, side, side), seed=0, device=device)
                try:
                    case_rows = measure_model_variants(net_name, model, sde, x_T, variants, steps, backend, repeats,
                                                       timing, args.max_rel_iqr)
                except Exception as e:  # noqa: BLE001  (one failing case must not cost the rest of the run)
                    warnings.warn(f"{net_name} batch {batch} failed: {common.error_text(e)}", RuntimeWarning)
                    case_rows = [{"model": net_name, "batch": batch, "error": common.error_text(e)}]
                print(common.markdown_table(case_rows, VARIANT_COLUMNS, header=False), flush=True)
                rows += case_rows
                common.write_results(args.out, "model-variants", title, info, settings, rows, VARIANT_COLUMNS,
                                     VARIANT_NOTES, finished=False)
    torch._dynamo.reset()
    paths = common.write_results(args.out, "model-variants", title, info, settings, rows, VARIANT_COLUMNS,
                                 VARIANT_NOTES)
    print(common.describe_reliability(common.reliability_summary(rows, args.max_rel_iqr), args.max_rel_iqr))
    print("wrote", *paths, flush=True)
    return paths


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench_samplers", description=__doc__.split("\n\n")[0])
    common.add_common_arguments(parser)
    parser.add_argument("--models", default=None, help=f"comma list of networks (default: {','.join(MODELS)})")
    parser.add_argument("--samplers", default=None, help=f"comma list of samplers (default: {','.join(SAMPLERS)})")
    parser.add_argument("--batch", type=int, default=None, help="samples per run (default 16 on the CPU, 64 on a GPU)")
    parser.add_argument("--steps", type=int, default=None,
                        help="SDE sampler steps for every network (default: CPU tutorial 50, tiny 200; GPU 500)")
    parser.add_argument("--tol", type=float, default=None,
                        help="ODE atol = rtol for both ODE samplers (default 1e-3 on the CPU, 1e-5 on a GPU)")
    parser.add_argument("--repeats", type=int, default=None,
                        help=f"timed runs per variant (default 5, {common.MIN_REPEATS} with --quick; "
                             f"at least {common.MIN_REPEATS})")
    parser.add_argument("--backend", default="auto", help="scoreops backend (default: the fastest built one)")
    variants = parser.add_argument_group(
        "score-model variants", "--model-variants times the score model eager, with torch.compile and in "
        "channels_last (forward pass, first call, and a short em_sample run) instead of the sampler table; "
        "--steps and --repeats then default to 10 and 5")
    variants.add_argument("--model-variants", action="store_true", help="time the score-model variants")
    variants.add_argument("--nets", default=None,
                          help=f"comma list of {list(VARIANT_NETS)} (default: "
                               f"{','.join(VARIANT_DEFAULTS['full']['nets'])})")
    variants.add_argument("--batches", default=None,
                          help=f"comma list of batch sizes (default: "
                               f"{','.join(map(str, VARIANT_DEFAULTS['full']['batches']))})")
    variants.add_argument("--variants", default=None,
                          help=f"comma list of {list(MODEL_VARIANTS)} (default: all; eager is always timed)")
    return parser


def _batches(text: str) -> list[int]:
    try:
        return [int(b) for b in common.split_list(text)]
    except ValueError:
        raise ValueError(f"--batches must be a comma list of batch sizes such as 64,512, got {text!r}") from None


def _choices(text: str, allowed, flag: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = sorted(set(names) - set(allowed))
    if unknown or not names:
        raise ValueError(f"{flag}: unknown or no names {unknown}; choose from {list(allowed)}")
    return names


def main(argv: list[str] | None = None) -> tuple:
    """Run the sampler benchmark from command-line arguments; returns the (JSON, markdown) paths written."""
    args = build_parser().parse_args(argv)
    sampler_only = {"--batch": args.batch, "--tol": args.tol, "--models": args.models, "--samplers": args.samplers}
    variants_only = {"--nets": args.nets, "--batches": args.batches, "--variants": args.variants}
    misplaced = [flag for flag, value in (sampler_only if args.model_variants else variants_only).items()
                 if value is not None]
    if misplaced:
        raise ValueError(f"{', '.join(misplaced)} {'do' if len(misplaced) > 1 else 'does'} not apply "
                         f"{'with' if args.model_variants else 'without'} --model-variants")
    device, timing = common.prepare(args)
    if args.model_variants:
        return run_model_variants(args, device, timing)
    defaults = DEFAULTS["quick" if args.quick else device.type]
    batch = args.batch if args.batch is not None else defaults["batch"]
    tol = args.tol if args.tol is not None else defaults["tol"]
    repeats = args.repeats if args.repeats is not None else defaults["repeats"]
    model_names = _choices(args.models or ",".join(MODELS), MODELS, "--models")
    sampler_names = _choices(args.samplers or ",".join(SAMPLERS), SAMPLERS, "--samplers")
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
