"""Smoke test of benchmarks/bench_overhead.py: a tiny run writes consistent JSON and markdown."""
import json

import pytest

try:  # installed: setup.py maps benchmarks/ to scoreops.benchmarks
    from scoreops.benchmarks import bench_overhead
except ModuleNotFoundError as e:
    if e.name != "scoreops.benchmarks":
        raise
    from benchmarks import bench_overhead


def test_overhead_rows_hold_each_variants_time_and_their_ratio(tmp_path):
    rows, (json_path, md_path) = bench_overhead.main(
        ["--quick", "--device", "cpu", "--shapes", "3x1x4x4", "--samplers", "dpmpp_2m,unipc", "--out", str(tmp_path)])
    result = json.loads(json_path.read_text())
    assert result["finished"] and [r["sampler"] for r in result["rows"]] == ["dpmpp_2m", "unipc"]
    assert "| dpmpp_2m | 3x1x4x4 |" in md_path.read_text()
    for row in rows:
        assert row["scoreops-cpu_ms"] > 0 and row["denoiser_ms"] > 0
        # ms/step is the median of the whole run over its steps
        assert row["scoreops-cpu_ms"] == pytest.approx(row["timings"]["scoreops-cpu"]["median_s"] * 1e3
                                                       / bench_overhead.STEPS)
    if result["settings"]["k_diffusion"]:
        row = rows[0]
        fastest = min(row[k] for k in row if k.startswith("scoreops-") and k.endswith("_ms"))
        if row["ratio"] is not None:
            assert row["ratio"] == pytest.approx(row["k-diffusion_ms"] / fastest)
        assert rows[1].get("k-diffusion_ms") is None  # k-diffusion has no UniPC


def test_unknown_sampler_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="unknown sampler"):
        bench_overhead.main(["--quick", "--samplers", "rk4", "--out", str(tmp_path)])
