"""Smoke tests of the benchmarks: each runs at a tiny size and writes consistent JSON and markdown.

They check what the files say and that the derived numbers follow from the measured ones; they
time nothing. The statistics and the reliability flags are checked against numpy and on crafted
timings.
"""
import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import benchmark_module

bench_samplers = benchmark_module("bench_samplers")
bench_steps = benchmark_module("bench_steps")
common = benchmark_module("common")

GPU_CHECK = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"
MACHINE_KEYS = {"device", "device_name", "host_cpu", "cpu_count", "torch_threads", "date", "python", "torch",
                "triton", "scoreops", "load_average", "load_average_end"}


@pytest.fixture(autouse=True)
def restore_threads():
    """The benchmarks run here with --threads 1 (fast, and steady on a busy machine); give the rest back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _load(paths):
    json_path, md_path = map(Path, paths)
    assert json_path.parent == md_path.parent
    assert json_path.stem == md_path.stem
    return json.loads(json_path.read_text()), md_path.read_text()


def _check_markdown(md: str, result: dict, columns) -> list[list[str]]:
    """The markdown names the machine, has one table row per JSON row, marks each measured row
    reliable or not as the JSON does, and says how many are not; returns the cells."""
    assert result["machine"]["device_name"] in md
    header = "| " + " | ".join(c.header for c in columns) + " |"
    lines = md.splitlines()
    start = lines.index(header)
    rows = [line for line in lines[start + 2:] if line.startswith("|")]
    assert len(rows) == len(result["rows"])
    cells = [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]
    reliable = [c.header for c in columns].index("reliable")
    for row, r in zip(cells, result["rows"]):
        if "reliable" in r:
            assert row[reliable] == ("yes" if r["reliable"] else "**no**: " + "; ".join(r["unreliable_reasons"]))
    max_rel_iqr = result["settings"]["max_rel_iqr"]
    assert result["reliability"] == common.reliability_summary(result["rows"], max_rel_iqr)
    assert common.describe_reliability(result["reliability"], max_rel_iqr) in md
    return cells


def _figure(row: dict, key: str) -> float:
    """A derived figure of a row, also where judge() voided it as impossible (None where not measured)."""
    return row[key] if row[key] is not None else row["impossible"].get(key)


def _check_judged(row: dict, settings: dict, repeats: int) -> None:
    """A measured row's timings hold their repeats, their medians and spreads agree with numpy,
    and the verdict follows from them and from the impossible figures."""
    for t in row["timings"].values():
        samples = np.array(t["samples_s"])
        assert t["repeats"] == len(samples) == repeats
        assert t["median_s"] == pytest.approx(np.median(samples), rel=1e-12)
        q25, q75 = np.percentile(samples, [25, 75])
        assert t["rel_iqr"] == pytest.approx((q75 - q25) / np.median(samples), rel=1e-9, abs=1e-12)
    assert row["rel_iqr"] == max(t["rel_iqr"] for t in row["timings"].values())
    wide = row["rel_iqr"] > settings["max_rel_iqr"]
    reasons = row["unreliable_reasons"]
    assert any(reason.startswith("rel. IQR") for reason in reasons) == wide
    named = [reason.split()[0] for reason in reasons if not reason.startswith("rel. IQR")]
    assert set(row["impossible"]) == {key for name in named for key in (name, *_VOIDS[name])}
    assert len(reasons) == wide + len(named)
    assert row["reliable"] == (not reasons)
    for key in row["impossible"]:
        assert row[key] is None


# The figures of both benchmarks that judge() bounds -> the figures each voids with it.
_VOIDS = {f.key: f.voids
          for f in (*bench_steps.FIGURES, *bench_samplers.FIGURES, *bench_samplers.VARIANT_FIGURES)}


@pytest.mark.parametrize("text, shape", [("64x1x28x28", (64, 1, 28, 28)), ("2^24", (64, 2**18)),
                                         ("4096", (64, 64)), ("2^5", (1, 32)), ("7", (1, 7))])
def test_parse_shape(text, shape):
    assert common.parse_shape(text) == shape


@pytest.mark.parametrize("text", ["", "64x", "2^", "axb", "0x3", "-4"])
def test_parse_shape_rejects_bad_sizes(text):
    with pytest.raises(ValueError, match="size"):
        common.parse_shape(text)


def test_slug_names_devices_as_files():
    assert common.slug("Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz") == "intel-xeon-gold-6338-cpu-2-00ghz"
    assert common.slug("NVIDIA H200") == "nvidia-h200"
    assert common.slug("(R)") == "unknown"


def test_markdown_table_formats_and_marks_missing_values():
    columns = [common.Column("a", "A"), common.Column("b", "B", "{:.2f}"), common.Column("n", "N", common.format_count)]
    table = common.markdown_table([{"a": "x", "b": 1.0 / 3, "n": 2**22}, {"a": "y", "n": 50176}], columns)
    assert table.splitlines() == ["| A | B | N |", "|---|---|---|", "| x | 0.33 | 2^22 |", "| y | - | 50176 |"]


@pytest.mark.parametrize("fraction, text", [(0.1, "10.0%"), (0.1044, "10.4%"), (0.02, "2.00%"), (0.9996, "100%"),
                                            (9.226, "923%"), (12.58, "1258%")])
def test_format_percent(fraction, text):
    assert common.format_percent(fraction) == text


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8, 31])
def test_median_and_rel_iqr_match_numpy(seed, n):
    gen = torch.Generator().manual_seed(seed)
    samples = (1e-3 * torch.rand(n, generator=gen, dtype=torch.float64) + 1e-4).tolist()
    median, rel_iqr = common.median_and_rel_iqr(samples)
    q25, q75 = np.percentile(samples, [25, 75])
    assert median == pytest.approx(np.median(samples), rel=1e-12)
    assert rel_iqr == pytest.approx((q75 - q25) / np.median(samples), rel=1e-9, abs=1e-12)
    timing = common.Timing(tuple(samples))
    assert (timing.median, timing.rel_iqr) == (median, rel_iqr)
    assert timing.as_json() == {"median_s": median, "rel_iqr": rel_iqr, "repeats": n, "samples_s": samples}


def test_rel_iqr_is_undefined_without_a_positive_median():
    assert math.isnan(common.median_and_rel_iqr([0.0, 0.0, 1.0])[1])
    assert common.Timing((0.0, -1.0, 0.0)).as_json()["rel_iqr"] is None
    with pytest.raises(ValueError, match="at least one sample"):
        common.median_and_rel_iqr([])


@pytest.mark.parametrize("figure, value, possible", [
    (common.Figure("t"), 1e-9, True), (common.Figure("t"), 0.0, False), (common.Figure("t"), -1.0, False),
    (common.Figure("t"), math.inf, False), (common.Figure("t"), math.nan, False),
    (common.Figure("o", strict=False), 0.0, True), (common.Figure("o", strict=False), -1e-9, False),
    (common.Figure("share", high=1.0), 1.0, True), (common.Figure("share", high=1.0), 1.01, False),
])
def test_figure_bounds(figure, value, possible):
    why = figure.why_impossible(value)
    assert (why is None) == possible
    if why is not None:
        assert why.startswith(figure.key + " ")


def _tight(median: float) -> common.Timing:
    """Five repeats within 2 % of ``median``: rel. IQR 2 %."""
    return common.Timing(tuple(median * f for f in (1.0, 0.99, 1.02, 1.01, 0.98)))


def test_judge_passes_a_normal_row_and_flags_too_few_repeats():
    row = common.judge({"t": 1.0, "ratio": 2.0}, {"a": _tight(1.0), "b": _tight(2.0)},
                       [common.Figure("t"), common.Figure("ratio")], max_rel_iqr=0.05)
    assert row["reliable"] is True and row["unreliable_reasons"] == [] and row["impossible"] == {}
    assert row["rel_iqr"] == pytest.approx(0.02) and row["t"] == 1.0 and row["ratio"] == 2.0
    row = common.judge({"t": 1.0}, {"a": common.Timing((1.0, 1.0))}, [common.Figure("t")], max_rel_iqr=0.05)
    assert row["reliable"] is False and row["unreliable_reasons"] == [f"2 repeats < {common.MIN_REPEATS}"]


def _fake_times(fused_samples):
    """A stand-in for common.median_times: crafted timings, the fused backend's given."""
    def median_times(fns, rounds, min_run_time):
        made = {"eager": _tight(4e-3), "copy": _tight(1e-3)}
        return {name: made.get(name, common.Timing(fused_samples)) for name in fns}
    return median_times


@pytest.mark.parametrize("case", ["normal", "wide", "zero"])
def test_step_rows_are_judged_from_their_timings(monkeypatch, case):
    fused = {"normal": _tight(2e-3).samples, "wide": (1e-3, 2e-3, 3e-3, 2e-3, 2.5e-3), "zero": (0.0,) * 5}[case]
    monkeypatch.setattr(common, "median_times", _fake_times(fused))
    (row,) = bench_steps.measure_case("em", (3, 5), torch.device("cpu"), ["cpu"], compile_step=False,
                                      rounds=5, min_run_time=0.01, max_rel_iqr=0.1)
    reasons = row["unreliable_reasons"]
    if case == "normal":
        assert row["reliable"] is True and reasons == [] and row["impossible"] == {}
        assert row["fused_ms"] == pytest.approx(2.0) and row["speedup_vs_eager"] == pytest.approx(2.0)
        assert row["fraction_of_copy"] == pytest.approx(12 / 8 * 1 / 2)
    elif case == "wide":  # (2.5 - 2) / 2 = 25 %: printed, but not a result
        assert row["reliable"] is False and reasons == ["rel. IQR > 10.0%: fused 25.0%"]
        assert row["rel_iqr"] == pytest.approx(0.25) and row["impossible"] == {}
        assert row["fused_ms"] == pytest.approx(2.0) and row["speedup_vs_eager"] == pytest.approx(2.0)
    else:  # a time of 0: no division error, every figure from it void
        assert row["reliable"] is False and row["rel_iqr"] is None
        assert reasons[0] == "rel. IQR > 10.0%: fused undefined"
        assert reasons[1:] == ["fused_ms 0 <= 0"]
        assert row["impossible"] == {"fused_ms": 0.0, "fused_gbps": "inf", "fraction_of_copy": "inf",
                                     "speedup_vs_eager": "inf"}
        assert row["fused_ms"] is None and row["speedup_vs_eager"] is None and row["eager_ms"] > 0
        assert row["copy_gbps"] == pytest.approx(8 * 15 / 1e-3 / 1e9)


def test_a_negative_overhead_is_marked_and_not_printed(tmp_path, monkeypatch):
    """Parts timed alone that add up to more than the run: the row stays, its overhead does not."""
    run = {"eager": _tight(1.0), "scoreops": _tight(0.5)}
    # eager: 3 model calls of 0.5 s in a 1 s run; scoreops: 3 x 0.1 s + 3 x 0.01 s of a 0.5 s run.
    parts = {"eager": (_tight(0.5), {"em": _tight(0.01)}), "scoreops": (_tight(0.1), {"em": _tight(0.01)})}
    monkeypatch.setattr(common, "median_run_times", lambda fns, device, repeats: {v: run[v] for v in fns})
    monkeypatch.setattr(bench_samplers, "part_times", lambda sampler, model, x_T, variants, backend, timing: parts)
    sde = bench_samplers.VESDE(bench_samplers.SIGMA)
    model = bench_samplers.build_model("tiny", sde, torch.device("cpu"))
    x_T = sde.prior_sample(2, bench_samplers.SHAPE, seed=0, device="cpu")
    eager, fused = bench_samplers.measure_sampler("em", "tiny", model, sde, x_T, 3, 1e-2, "cpu", 5, {}, 0.1)

    assert eager["reliable"] is False
    assert eager["unreliable_reasons"] == ["overhead_s -0.53 < 0", "model_share 1.5 > 1"]
    assert eager["impossible"] == pytest.approx({"overhead_s": -0.53, "overhead_share": -0.53,
                                                 "overhead_per_step_ms": -530 / 3, "model_share": 1.5})
    assert all(eager[key] is None for key in eager["impossible"])
    assert eager["seconds"] == pytest.approx(1.0) and eager["model_s"] == pytest.approx(1.5)
    assert fused["reliable"] is True and fused["impossible"] == {}
    assert fused["overhead_s"] == pytest.approx(0.5 - 0.3 - 0.03) and fused["speedup_vs_eager"] == pytest.approx(2)

    settings = {"max_rel_iqr": 0.1}
    json_path, md_path = common.write_results(tmp_path, "samplers", "t", common.machine_info("cpu"), settings,
                                              [eager, fused], bench_samplers.COLUMNS)
    # Strict JSON: no NaN or Infinity.
    result = json.loads(json_path.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in the JSON"))
    assert result["reliability"] == {"rows": 2, "unreliable": 1, "wide_spread": 0, "impossible": 1,
                                     "too_few_repeats": 0}
    cells = _check_markdown(md_path.read_text(), result, bench_samplers.COLUMNS)
    keys = [c.key for c in bench_samplers.COLUMNS]
    for key in ("model_share", "overhead_share", "overhead_per_step_ms"):
        assert cells[0][keys.index(key)] == common.INVALID
        assert cells[1][keys.index(key)] not in (common.INVALID, "-")
    assert "-53%" not in md_path.read_text() and "150%" not in md_path.read_text()
    assert "1 of 2 measured rows are unreliable** (1 with an impossible figure" in md_path.read_text()


def test_bench_steps_writes_consistent_results(tmp_path):
    ops = ["em", "langevin", "em_mean"]
    paths = bench_steps.main(["--quick", "--threads", "1", "--device", "cpu", "--no-compile", "--sizes", "3x5x7,2^6",
                              "--ops", ",".join(ops), "--out", str(tmp_path)])
    result, md = _load(paths)
    assert Path(paths[0]).name == f"steps-{common.device_slug('cpu')}.json"
    assert result["finished"] is True and "Partial" not in md
    assert MACHINE_KEYS <= set(result["machine"])
    backends = bench_steps.fused_backends(torch.device("cpu"))
    assert "cpu" in backends and "torch" not in backends and "triton" not in backends
    settings = result["settings"]
    assert settings["rounds"] == common.MIN_REPEATS and settings["max_rel_iqr"] == common.DEFAULT_MAX_REL_IQR
    assert "rel_iqr" in settings["spread_measure"]
    rows = result["rows"]
    assert [(r["shape"], r["op"], r["backend"]) for r in rows] == [
        (shape, op, b) for shape in ("3x5x7", "64x1") for op in ops for b in backends]
    for r in rows:
        assert r["numel"] == math.prod(int(d) for d in r["shape"].split("x"))
        assert r["bytes_per_element"] == (16 if r["op"] == "langevin" else 12)
        _check_judged(r, settings, repeats=common.MIN_REPEATS)
        assert set(r["timings"]) == {"fused", "eager", "copy"}
        median_ms = {name: 1e3 * t["median_s"] for name, t in r["timings"].items()}
        assert r["fused_ms"] == median_ms["fused"] > 0 and r["eager_ms"] == median_ms["eager"] > 0
        assert r["compile_ms"] is None and r["compile_aten_rng_ms"] is None and r["speedup_vs_compile"] is None
        assert _figure(r, "copy_gbps") == pytest.approx(8 * r["numel"] / (median_ms["copy"] * 1e6))
        assert _figure(r, "fused_gbps") == pytest.approx(r["bytes_per_element"] * r["numel"] / (r["fused_ms"] * 1e6))
        assert _figure(r, "fraction_of_copy") == pytest.approx(_figure(r, "fused_gbps") / _figure(r, "copy_gbps"))
        assert _figure(r, "speedup_vs_eager") == pytest.approx(r["eager_ms"] / r["fused_ms"])
    cells = _check_markdown(md, result, bench_steps.COLUMNS)
    assert [row[:4] for row in cells] == [[r["op"], r["shape"], "105" if r["numel"] == 105 else "2^6", r["backend"]]
                                          for r in rows]
    assert all(row[6] == row[7] == "-" for row in cells)  # the compile columns, not measured


def test_a_stopped_run_leaves_what_it_measured(tmp_path, monkeypatch):
    measure_case = bench_steps.measure_case

    def stop_at_langevin(name, *args, **kwargs):
        if name == "langevin":
            raise KeyboardInterrupt  # what a time limit looks like from inside
        return measure_case(name, *args, **kwargs)

    monkeypatch.setattr(bench_steps, "measure_case", stop_at_langevin)
    with pytest.raises(KeyboardInterrupt):
        bench_steps.main(["--quick", "--threads", "1", "--device", "cpu", "--no-compile", "--sizes", "3x5x7",
                          "--ops", "em,milstein,langevin", "--out", str(tmp_path)])
    result = json.loads((tmp_path / f"steps-{common.device_slug('cpu')}.json").read_text())
    assert result["finished"] is False
    assert [r["op"] for r in result["rows"]] == ["em", "milstein"]
    assert "Partial results" in (tmp_path / f"steps-{common.device_slug('cpu')}.md").read_text()


@pytest.mark.slow
def test_bench_steps_times_torch_compile(tmp_path):
    paths = bench_steps.main(["--quick", "--threads", "1", "--device", "cpu", "--sizes", "2x9", "--ops", "milstein",
                              "--backends", "torch", "--out", str(tmp_path)])
    (row,) = _load(paths)[0]["rows"]
    assert row["compile_ms"] > 0 and row["compile_aten_rng_ms"] > 0 and row["compile_errors"] == {}
    best = min(row["compile_ms"], row["compile_aten_rng_ms"])
    assert row["speedup_vs_compile"] == pytest.approx(best / row["fused_ms"])


def test_bench_steps_records_a_failed_compile(tmp_path, monkeypatch):
    def broken_compile(fn, **kwargs):
        def compiled(*args):
            raise RuntimeError("no C++ compiler\nsecond line")
        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    with pytest.warns(RuntimeWarning, match="no C.. compiler"):
        paths = bench_steps.main(["--quick", "--threads", "1", "--device", "cpu", "--sizes", "2x9", "--ops", "em",
                                  "--backends", "torch", "--out", str(tmp_path)])
    (row,) = _load(paths)[0]["rows"]
    assert row["compile_errors"] == {mode: "RuntimeError: no C++ compiler" for mode in bench_steps.COMPILE_MODES}
    assert row["compile_ms"] is None and row["compile_aten_rng_ms"] is None and row["speedup_vs_compile"] is None
    assert row["fused_ms"] > 0 and row["eager_ms"] > 0


@pytest.mark.parametrize("argv, error, match", [
    (["--ops", "em,heun"], ValueError, "heun"),
    (["--backends", "nope"], ValueError, "backend"),
    (["--sizes", "3xx"], ValueError, "size"),
    (["--rounds", "0"], ValueError, "rounds"),
    (["--rounds", str(common.MIN_REPEATS - 1)], ValueError, "rounds"),
    (["--max-rel-iqr", "0"], ValueError, "max-rel-iqr"),
])
def test_bench_steps_rejects_bad_arguments(tmp_path, argv, error, match):
    with pytest.raises(error, match=match):
        bench_steps.main(["--quick", "--threads", "1", "--device", "cpu", "--out", str(tmp_path), *argv])
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without a GPU")
def test_benchmarks_refuse_cuda_without_a_gpu(tmp_path):
    for bench in (bench_steps, bench_samplers):
        with pytest.raises(RuntimeError, match="no CUDA GPU"):
            bench.main(["--quick", "--device", "cuda", "--out", str(tmp_path)])


def test_bench_samplers_writes_consistent_results(tmp_path):
    samplers = ["em", "pc", "ode"]
    paths = bench_samplers.main(["--quick", "--threads", "1", "--device", "cpu", "--models", "tiny",
                                 "--samplers", ",".join(samplers), "--batch", "2", "--steps", "3", "--tol", "1e-2",
                                 "--out", str(tmp_path)])
    result, md = _load(paths)
    assert Path(paths[0]).name == f"samplers-{common.device_slug('cpu')}.json"
    assert result["finished"] is True and "Partial" not in md
    assert MACHINE_KEYS <= set(result["machine"])
    settings = result["settings"]
    assert settings["ode_tol"] == 1e-2
    assert settings["repeats"] == settings["rounds"] == common.MIN_REPEATS
    rows = result["rows"]
    assert [(r["sampler"], r["variant"]) for r in rows] == [(s, v) for s in samplers for v in ("eager", "scoreops")]
    for r in rows:
        assert r["model"] == "tiny" and r["batch"] == 2
        _check_judged(r, settings, repeats=common.MIN_REPEATS)
        timings = r["timings"]
        updates = {"em": ["em"], "pc": ["langevin", "em"], "ode": []}[r["sampler"]]
        assert set(timings) == {"run", "model call", *(f"{u} update" for u in updates),
                                *(["eager run"] if r["variant"] != "eager" else [])}
        assert r["seconds"] == timings["run"]["median_s"] > 0
        assert _figure(r, "model_s") == pytest.approx(timings["model call"]["median_s"] * r["nfe"])
        assert _figure(r, "samples_per_s") == pytest.approx(2 / r["seconds"])
        parts = _figure(r, "model_s") + (_figure(r, "update_s") or 0.0) + _figure(r, "overhead_s")
        assert parts == pytest.approx(r["seconds"])
        assert _figure(r, "overhead_per_step_ms") == pytest.approx(1e3 * _figure(r, "overhead_s") / r["steps"])
        assert (_figure(r, "overhead_s") < 0) == ("overhead_s" in r["impossible"])
        if r["sampler"] == "ode":
            assert r["update_s"] is None and r["steps"] >= 1 and r["nfe"] >= 6 * r["steps"]
        else:
            assert r["steps"] == 3 and r["nfe"] == 3 * len(updates) and _figure(r, "update_s") > 0
            assert _figure(r, "update_s") == pytest.approx(
                sum(timings[f"{u} update"]["median_s"] for u in updates) * r["steps"])
    eager = {r["sampler"]: r["seconds"] for r in rows if r["variant"] == "eager"}
    for r in rows:
        assert _figure(r, "speedup_vs_eager") == pytest.approx(eager[r["sampler"]] / r["seconds"])
    cells = _check_markdown(md, result, bench_samplers.COLUMNS)
    assert [row[:3] for row in cells] == [[r["model"], r["sampler"], r["variant"]] for r in rows]


def test_channels_last_variant_matches_the_model_and_leaves_it_alone(seed):
    sde = bench_samplers.VESDE(bench_samplers.SIGMA)
    model = bench_samplers.build_model("tiny", sde, torch.device("cpu"))
    x, t = torch.randn(3, *bench_samplers.SHAPE), torch.rand(3) * 0.9 + 0.1
    wrapped = bench_samplers.ChannelsLast(model)
    with torch.no_grad():
        out, expected = wrapped(x, t), model(x, t)
    assert out.is_contiguous() and out.shape == x.shape
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
    conv = wrapped.model.down[1].conv.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert model.down[1].conv.weight.is_contiguous()


def _fake_compile(calls, fail=False):
    """A stand-in for torch.compile that records its mode and returns the module itself (or one that fails)."""
    def compile_(model, mode=None, **kwargs):
        calls.append(mode)
        return _raise if fail else model
    return compile_


def test_bench_samplers_times_model_variants(tmp_path, monkeypatch):
    """The --model-variants table's structure and arithmetic (torch.compile stood in for: no timing of inductor)."""
    calls = []
    monkeypatch.setattr(torch, "compile", _fake_compile(calls))
    paths = bench_samplers.main(["--model-variants", "--quick", "--threads", "1", "--device", "cpu",
                                 "--batches", "2,3", "--steps", "3", "--out", str(tmp_path)])
    result, md = _load(paths)
    assert Path(paths[0]).name == f"model-variants-{common.device_slug('cpu')}.json"
    assert result["finished"] is True and MACHINE_KEYS <= set(result["machine"])
    settings = result["settings"]
    assert settings["batches"] == [2, 3] and settings["steps"] == 3 and settings["inductor_caches"] is False
    variants = list(bench_samplers.MODEL_VARIANTS)
    assert set(settings["variants"]) == set(variants) and set(settings["nets"]) == {"tiny"}
    # The startup compile, then per batch each compiled variant once, in its own mode.
    modes = [spec.compile_mode for spec in bench_samplers.MODEL_VARIANTS.values() if spec.compile_mode]
    assert calls == [None, *modes, *modes]
    rows = result["rows"]
    assert [(r["batch"], r["variant"]) for r in rows] == [(b, v) for b in (2, 3) for v in variants]
    for r in rows:
        _check_judged(r, settings, repeats=common.MIN_REPEATS)
        assert r["model"] == "tiny" and r["steps"] == 3 and r.get("error") is None
        eager = next(e for e in rows if e["batch"] == r["batch"] and e["variant"] == "eager")
        timings = r["timings"]
        assert set(timings) == {"model call", "run", *(("eager model call", "eager run") if r is not eager else ())}
        assert r["forward_ms"] == pytest.approx(1e3 * timings["model call"]["median_s"])
        assert r["run_s"] == timings["run"]["median_s"] > 0 and r["first_call_s"] > 0
        forward, eager_forward = _figure(r, "forward_ms") / 1e3, _figure(eager, "forward_ms") / 1e3
        assert _figure(r, "forward_speedup") == pytest.approx(eager_forward / forward)
        assert _figure(r, "run_speedup") == pytest.approx(eager["run_s"] / r["run_s"])
        if r is eager or forward >= eager_forward or "forward_ms" in r["impossible"]:
            assert r["break_even_calls"] is None
        else:
            paid_back = max(0, r["first_call_s"] - forward) / (eager_forward - forward)
            assert r["break_even_calls"] == pytest.approx(paid_back)
        assert r["channels_last"] == ("channels_last" in r["variant"]) and 0 <= r["max_rel_diff"] < 1e-4
    cells = _check_markdown(md, result, bench_samplers.VARIANT_COLUMNS)
    assert [row[:3] for row in cells] == [[r["model"], str(r["batch"]), r["variant"]] for r in rows]


def test_a_failing_compile_is_recorded_beside_the_other_model_variants(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "compile", _fake_compile([], fail=True))
    with pytest.warns(RuntimeWarning, match="tiny batch 2 compile failed: RuntimeError: kernel failed"):
        paths = bench_samplers.main(["--model-variants", "--quick", "--threads", "1", "--device", "cpu",
                                     "--variants", "channels_last,compile", "--out", str(tmp_path)])
    rows = _load(paths)[0]["rows"]
    assert [(r["variant"], r.get("error")) for r in rows] == [
        ("eager", None), ("channels_last", None), ("compile", "RuntimeError: kernel failed")]
    assert rows[0]["forward_speedup"] == 1.0 and rows[1]["forward_ms"] > 0


@pytest.mark.slow
def test_bench_samplers_compiles_the_model(tmp_path):
    paths = bench_samplers.main(["--model-variants", "--quick", "--threads", "1", "--device", "cpu",
                                 "--variants", "compile", "--out", str(tmp_path)])
    result = _load(paths)[0]
    eager, compiled = result["rows"]
    assert compiled["variant"] == "compile" and compiled.get("error") is None
    assert compiled["first_call_s"] > 0 and compiled["forward_ms"] > 0 and compiled["max_rel_diff"] < 1e-4
    assert result["settings"]["inductor_startup_s"] > 0


@pytest.mark.parametrize("argv, match", [
    (["--model-variants", "--batch", "4"], "--batch does not apply with --model-variants"),
    (["--model-variants", "--models", "tiny", "--tol", "1e-2"], "--tol, --models do not apply with"),
    (["--batches", "4"], "--batches does not apply without --model-variants"),
    (["--model-variants", "--nets", "nope"], "--nets"),
    (["--model-variants", "--variants", "jit"], "--variants"),
    (["--model-variants", "--batches", "0"], "--batches"),
    (["--model-variants", "--batches", "4x"], "--batches"),
])
def test_bench_samplers_rejects_misplaced_or_bad_variant_arguments(tmp_path, argv, match):
    with pytest.raises(ValueError, match=match):
        bench_samplers.main(["--quick", "--threads", "1", "--device", "cpu", "--out", str(tmp_path), *argv])
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the stop without a GPU")
def test_gpu_check_stops_cleanly_without_a_gpu(tmp_path):
    out, tmp = tmp_path / "out", tmp_path / "tmp"
    tmp.mkdir()
    env = dict(os.environ, OUT=str(out), TMPDIR=str(tmp), PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(GPU_CHECK)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no CUDA GPU" in proc.stdout
    assert [p.name for p in out.iterdir()] == ["gpu_check.log"]
    assert "no CUDA GPU" in (out / "gpu_check.log").read_text()
    assert not list(tmp.iterdir())  # nothing was built


def _raise(*args, **kwargs):
    raise RuntimeError("kernel failed\nsecond line")


def test_a_failing_step_case_is_recorded_and_the_rest_measured(tmp_path, monkeypatch):
    monkeypatch.setitem(bench_steps.CASES, "em", dataclasses.replace(bench_steps.CASES["em"], fused=_raise))
    with pytest.warns(RuntimeWarning, match="em at 3x5 failed: RuntimeError: kernel failed"):
        paths = bench_steps.main(["--quick", "--threads", "1", "--device", "cpu", "--no-compile", "--sizes", "3x5",
                                  "--ops", "em,milstein", "--out", str(tmp_path)])
    result, md = _load(paths)
    assert result["finished"] is True
    assert result["rows"][0] == {"op": "em", "shape": "3x5", "error": "RuntimeError: kernel failed"}
    assert [r["op"] for r in result["rows"][1:]] == ["milstein"] * len(bench_steps.fused_backends(torch.device("cpu")))
    assert all(r["fused_ms"] > 0 and r.get("error") is None for r in result["rows"][1:])
    assert "RuntimeError: kernel failed" in md


def test_a_failing_sampler_variant_is_recorded_beside_the_others(tmp_path, monkeypatch):
    monkeypatch.setitem(bench_samplers.SDE_SAMPLERS, "em",
                        dataclasses.replace(bench_samplers.SDE_SAMPLERS["em"], fused=_raise))
    with pytest.warns(RuntimeWarning, match="tiny em scoreops failed"):
        paths = bench_samplers.main(["--quick", "--threads", "1", "--device", "cpu", "--models", "tiny",
                                     "--samplers", "em,pc", "--batch", "2", "--steps", "3", "--out", str(tmp_path)])
    rows = _load(paths)[0]["rows"]
    assert [(r["sampler"], r["variant"], r.get("error")) for r in rows] == [
        ("em", "eager", None), ("em", "scoreops", "RuntimeError: kernel failed"),
        ("pc", "eager", None), ("pc", "scoreops", None)]
    assert rows[0]["seconds"] > 0 and rows[0]["speedup_vs_eager"] == 1.0


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_benchmarks_run_on_the_gpu(tmp_path):
    """The CUDA paths of both benchmarks, in seconds: sizes, the graph variant, the GPU machine line."""
    steps = _load(bench_steps.main(["--quick", "--device", "cuda", "--no-compile", "--sizes", "2x64,2^20",
                                    "--ops", "em,em_mean", "--out", str(tmp_path)]))[0]
    assert steps["machine"]["device"] == "cuda" and all(r.get("error") is None for r in steps["rows"])
    assert {r["backend"] for r in steps["rows"]} >= {"cuda", "triton"}
    rows = _load(bench_samplers.main(["--quick", "--device", "cuda", "--models", "tiny", "--samplers", "em,pc",
                                      "--out", str(tmp_path)]))[0]["rows"]
    assert all(r.get("error") is None and r["seconds"] > 0 for r in rows)
    assert {r["variant"] for r in rows} == {"eager", "scoreops", "scoreops+graph"}

