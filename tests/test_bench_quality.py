"""Smoke test of benchmarks/bench_quality.py on a two-step model: the table's NFE is the counted one."""
import json

from scoreops.cli import main as cli_main

try:  # installed: setup.py maps benchmarks/ to scoreops.benchmarks
    from scoreops.benchmarks import bench_quality
except ModuleNotFoundError as e:
    if e.name != "scoreops.benchmarks":
        raise
    from benchmarks import bench_quality

TINY = ["--image-size", "8", "--channels", "8,16", "--embed-dim", "16", "--batch-size", "16", "--steps", "2",
        "--device", "cpu"]


def test_quality_rows_count_nfe_and_spread_over_seeds(tmp_path):
    run = tmp_path / "run"
    assert cli_main(["train", "--dataset", "digits", *TINY, "--out", str(run)]) == 0
    rows = bench_quality.main(["--checkpoint", str(run), "--nfe", "3", "--samplers", "heun,unipc", "--seeds", "2",
                               "--samples", "8", "--classifier-cache", str(tmp_path / "cache"),
                               "--out", str(tmp_path / "out")])
    result = json.loads((tmp_path / "out" / "quality.json").read_text())
    assert result["rows"] == rows and result["data_floor_fd"] > 0
    ours = {r["sampler"]: r for r in rows if r["library"] == "scoreops"}
    assert ours["heun"]["nfe"] == 3 and ours["unipc"]["nfe"] == 3  # Heun: 2 steps, 2 * 2 - 1 calls
    for row in rows:
        assert len(row["fds"]) == 2 and abs(row["fd_mean"] - sum(row["fds"]) / 2) < 1e-9
    if result["k_diffusion"]:
        assert [r["sampler"] for r in rows if r["library"] == "k-diffusion"] == ["heun"]
    assert "| scoreops | heun | 3 |" in (tmp_path / "out" / "quality.md").read_text()
