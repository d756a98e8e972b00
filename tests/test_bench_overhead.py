"""Smoke tests of benchmarks/bench_overhead.py: a tiny run writes consistent JSON and markdown.

They check what the files say and that the derived figures follow from the measured timings;
they time nothing.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import benchmark_module

bench_overhead = benchmark_module("bench_overhead")
common = benchmark_module("common")

# One sampler k-diffusion has (a stochastic one: its noise_sampler path) and one it lacks.
SAMPLERS = ["euler_ancestral", "ipndm"]
TINY = ["--quick", "--device", "cpu", "--threads", "1", "--shapes", "3x1x4x4", "--min-run-time", "0.001",
        "--samplers", ",".join(SAMPLERS)]


@pytest.fixture(autouse=True)
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _run(out: Path, *extra: str) -> tuple[dict, list[list[str]]]:
    """Run the benchmark tiny; returns the JSON result and the markdown table's cells."""
    json_path, md_path = map(Path, bench_overhead.main([*TINY, "--out", str(out), *extra]))
    assert json_path.name == f"overhead-{common.device_slug('cpu')}.json"
    assert md_path == json_path.with_suffix(".md")
    result, md = json.loads(json_path.read_text()), md_path.read_text()
    assert result["benchmark"] == "overhead" and result["finished"]
    assert result["machine"]["device_name"] in md and result["machine"]["torch_threads"] == 1
    lines = md.splitlines()
    start = lines.index("| " + " | ".join(c.header for c in bench_overhead.COLUMNS) + " |")
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines[start + 2:] if line.startswith("|")]
    assert len(cells) == len(result["rows"])
    assert common.describe_reliability(result["reliability"], result["settings"]["max_rel_iqr"]) in md
    return result, cells


def _check_row(row: dict, cells: list[str]) -> None:
    """A row's times are its timings' medians (per step), agree with numpy, and print as stored."""
    headers = [c.header for c in bench_overhead.COLUMNS]
    cell = dict(zip(headers, cells))
    assert row.get("error") is None
    assert row["nfe"] == bench_overhead.STEPS  # one denoiser call per step for both samplers here
    ours = row["timings"][f"scoreops-{row['backend']}"]
    assert ours["repeats"] == common.MIN_REPEATS
    assert ours["median_s"] == pytest.approx(np.median(ours["samples_s"]), rel=1e-12)
    assert row["scoreops_ms"] == pytest.approx(1e3 * ours["median_s"] / bench_overhead.STEPS, rel=1e-12)
    assert row["denoiser_ms"] == pytest.approx(1e3 * row["denoiser_timing"]["median_s"], rel=1e-12)
    assert cell["scoreops ms/step"] == f"{row['scoreops_ms']:.3f}"
    assert cell["NFE"] == str(row["nfe"])
    assert cell["reliable"] == ("yes" if row["reliable"] else "**no**: " + "; ".join(row["unreliable_reasons"]))


def test_rows_hold_scoreops_times_and_k_diffusion_where_it_has_the_sampler(tmp_path):
    result, cells = _run(tmp_path)
    rows = result["rows"]
    assert [(r["sampler"], r["shape"], r["backend"]) for r in rows] == [(s, "3x1x4x4", "cpu") for s in SAMPLERS]
    assert result["settings"]["backends"] == ["cpu"] and result["settings"]["steps"] == bench_overhead.STEPS
    for row, row_cells in zip(rows, cells):
        _check_row(row, row_cells)
    k_sampling, why = bench_overhead.peers.k_diffusion_sampling()
    if k_sampling is None:
        pytest.skip(f"the k-diffusion columns need it: {why}")
    with_k, without_k = rows
    assert result["settings"]["k_diffusion"] and result["settings"]["k_diffusion_skipped"] is None
    k = with_k["timings"]["k-diffusion"]
    assert with_k["k_diffusion_nfe"] == with_k["nfe"]
    assert with_k["k_diffusion_ms"] == pytest.approx(1e3 * k["median_s"] / bench_overhead.STEPS, rel=1e-12)
    assert with_k["ratio"] == pytest.approx(with_k["k_diffusion_ms"] / with_k["scoreops_ms"], rel=1e-12)
    assert cells[0][[c.header for c in bench_overhead.COLUMNS].index("k-diffusion / scoreops")] == \
        f"{with_k['ratio']:.2f}"
    # k-diffusion has no iPNDM: its columns stay empty and its timing is not taken
    assert without_k["k_diffusion_ms"] is None and without_k["ratio"] is None
    assert set(without_k["timings"]) == {"scoreops-cpu"}
    assert cells[1][[c.header for c in bench_overhead.COLUMNS].index("k-diffusion ms/step")] == "-"


def test_without_k_diffusion_scoreops_runs_alone(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench_overhead.peers, "k_diffusion_sampling", lambda: (None, "k-diffusion is not installed"))
    result, cells = _run(tmp_path)
    assert "k-diffusion skipped: k-diffusion is not installed" in capsys.readouterr().out
    assert result["settings"]["k_diffusion"] is None
    for row, row_cells in zip(result["rows"], cells):
        _check_row(row, row_cells)
        assert row["k_diffusion_ms"] is None and row["ratio"] is None and row["k_diffusion_nfe"] is None


def test_bad_samplers_and_backends_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown or no samplers"):
        bench_overhead.main(["--quick", "--samplers", "rk4", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="backend must be one of"):
        bench_overhead.main(["--quick", "--device", "cpu", "--backend", "fast", "--out", str(tmp_path)])

