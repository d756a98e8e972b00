"""Smoke test of benchmarks/bench_quality.py on a two-step 8x8 model: its NFE are the model's calls,
its files have their structure, and its cache measures only what is not cached."""
import importlib.util
import json
import statistics

import torch
from conftest import TINY_TRAINING, benchmark_module

from scoreops.cli import main as cli_main

bench_quality = benchmark_module("bench_quality")

# NFE budget 4: Heun takes 2 steps (2 * 2 - 1 = 3 calls), PC 2 steps of 2 calls, the others 4 steps.
EXPECTED_NFE = {"heun": 3, "euler": 4, "em": 4, "pc": 4}


def test_quality_counts_nfe_writes_reports_and_reuses_its_cache(tmp_path, monkeypatch):
    run = tmp_path / "run"
    assert cli_main(["train", "--dataset", "digits", *TINY_TRAINING, "--out", str(run)]) == 0
    calls = []
    real_load_run = bench_quality.load_run

    def counting_load_run(*args, **kwargs):
        model, *rest = real_load_run(*args, **kwargs)
        model.register_forward_pre_hook(lambda module, inputs: calls.append(inputs[0].shape[0]))
        return (model, *rest)

    monkeypatch.setattr(bench_quality, "load_run", counting_load_run)
    monkeypatch.setattr(bench_quality, "warm_up", lambda model, x: None)
    out = tmp_path / "out"

    def bench(seeds, *extra):
        args = bench_quality.parse_args(["--checkpoint", str(run), "--samplers", ",".join(EXPECTED_NFE),
                                         "--nfe", "4", "--seeds", str(seeds), "--threads", "1",
                                         "--classifier-cache", str(tmp_path / "cache"), "--out", str(out), *extra])
        args.samples = 16  # below the 512 a real run needs: this checks the plumbing, not FD
        calls.clear()
        return bench_quality.run(args)

    result = bench(seeds=1)
    rows = result["rows"]
    assert json.loads((out / "quality.json").read_text()) == result
    assert result["data_floor_fd"] > 0 and result["settings"]["samples"] == 16
    assert [(r["sampler"], r["options"]) for r in rows if r["library"] == "scoreops"] == [
        (name, {}) for name in EXPECTED_NFE] + [("pc", {"predictor": "reverse_diffusion", "schedule": "log_sigma"})]
    for row in rows:
        assert row["nfe"] == EXPECTED_NFE[row["sampler"]] and row["nfe_per_seed"] == [row["nfe"]]
        assert len(row["fds"]) == 1 and row["fd_std"] is None and row["seconds"] > 0
    # Every model call was one of a reported run's, each at the full batch.
    assert len(calls) == sum(r["nfe"] for r in rows) and set(calls) == {16}
    if "k-diffusion" in result["libraries"]:
        assert [r["sampler"] for r in rows if r["library"] == "k-diffusion"] == ["heun", "euler"]
    assert result["headline"] == []  # no run at NFE 10, 20 or 50
    if importlib.util.find_spec("diffusers") is None:
        assert any(note.startswith("diffusers not installed") for note in result["notes"])
    else:  # EDM Euler at 4 steps, ScoreSdeVe PC at 2 steps of 2 calls
        assert [(r["sampler"], r["options"]) for r in rows if r["library"] == "diffusers"] == [
            ("euler", {"runner": "edm_euler"}), ("pc", {"runner": "sde_ve_pc"})]
        assert "| diffusers | euler | edm_euler | 4 | 4 |" in (out / "quality.md").read_text()
    text = (out / "quality.md").read_text()
    assert "data floor" in text and "| scoreops | heun | - | 2 | 3 |" in text
    for name in ("fd_vs_nfe.png", "fd_vs_seconds.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Rerun: every run comes from the cache, none calls the model, and the numbers are the same.
    again = bench(seeds=1)
    assert calls == [] and [r["fds"] for r in again["rows"]] == [r["fds"] for r in rows]

    # A second seed measures only seed 1's runs, and the rows then have a spread.
    two = bench(seeds=2)
    assert len(calls) == sum(r["nfe"] for r in rows)
    for old, new in zip(rows, two["rows"]):
        assert new["fds"][0] == old["fds"][0] and new["fd_std"] == statistics.stdev(new["fds"])

    # --compile: every library samples the compiled model (a stub here), cached apart from eager.
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda model, mode=None: compiled.append(model) or model)
    with_compile = bench(1, "--compile")
    assert len(compiled) == 1 and len(calls) == sum(r["nfe"] for r in rows)
    assert [r["fds"] for r in with_compile["rows"]] == [r["fds"] for r in rows]


def _row(library, sampler, budget, nfe, fds):
    return {"library": library, "sampler": sampler, "budget": budget, "nfe": nfe, "nfe_max": nfe, "options": {},
            "fd_mean": statistics.fmean(fds), "fd_std": statistics.stdev(fds), "seconds_per_512": 1.0}


def test_headline_takes_each_librarys_best_within_the_limit_and_wins_only_beyond_the_spread():
    rows = [_row("scoreops", "heun", 10, 9, [20.0, 22.0, 24.0]),  # 22 +- 2
            _row("scoreops", "dpmpp_2m_sde", 10, 10, [15.0, 16.0, 17.0]),  # 16 +- 1
            _row("scoreops", "dpmpp_2m_sde", 20, 20, [10.0, 10.5, 11.0]),  # 10.5 +- 0.5
            _row("k-diffusion", "dpmpp_2m_sde", 10, 10, [13.0, 16.0, 19.0]),  # 16 +- 3
            _row("k-diffusion", "dpmpp_2m_sde", 20, 20, [12.0, 13.0, 14.0]),  # 13 +- 1
            _row("k-diffusion", "dpm_adaptive", None, 45, [30.0, 31.0, 32.0])]
    table = bench_quality.headline(rows, ["scoreops", "k-diffusion"])
    # NFE 50 had no fixed budget, but the adaptive run's 45 NFE fall in (20, 50].
    assert [e["nfe_limit"] for e in table] == [10, 20, 50]
    assert table[0]["scoreops"] is rows[1] and table[0]["k-diffusion"] is rows[3]
    assert table[0]["verdict"] == "within spread"  # equal means
    assert table[1]["scoreops"] is rows[2] and table[1]["k-diffusion"] is rows[4]
    assert table[1]["verdict"] == "scoreops lower FD"  # 2.5 apart, spreads 0.5 and 1
    assert table[2]["k-diffusion"] is rows[4]  # the adaptive run fits NFE <= 50 but is worse
    assert bench_quality.headline(rows[:3], ["scoreops"])[1]["verdict"] == "-"
    assert bench_quality.verdict(rows[4], rows[2]) == "peer lower FD"


def test_fixed_budgets_above_50_nfe_take_fewer_seeds():
    spec = bench_quality.Spec
    assert bench_quality.seed_count(spec("scoreops", "em", 50, 50), 3, 1) == 3
    assert bench_quality.seed_count(spec("scoreops", "em", 100, 100), 3, 1) == 1
    assert bench_quality.seed_count(spec("scoreops", "ode", options=(("tol", 1e-3),)), 3, 1) == 3
    args = bench_quality.parse_args(["--seeds", "2", "--seeds-above-50", "5"])
    assert (args.seeds, args.seeds_above_50, args.compile) == (2, 2, False)
