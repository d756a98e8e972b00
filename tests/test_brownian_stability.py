"""Smoke test of benchmarks/brownian_stability.py on a two-step 8x8 model: its distances are
those of the samplers it names, zero for equal step counts, and it draws its figure."""
import json

import pytest
import torch
from conftest import TINY_TRAINING, benchmark_module

from scoreops import samplers
from scoreops.cli import main as cli_main

brownian_stability = benchmark_module("brownian_stability")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("brownian") / "run"
    assert cli_main(["train", "--dataset", "digits", *TINY_TRAINING, "--out", str(run)]) == 0
    return run


def test_distances_figure_and_json(tiny_run, tmp_path, seed):
    seed &= 0xFFFF
    result = brownian_stability.main(["--checkpoint", str(tiny_run), "--samplers", "euler_ancestral,dpmpp_2m_sde",
                                      "--pair", "3,5", "--samples", "6", "--seed", str(seed), "--threads", "1",
                                      "--figure", str(tmp_path / "f.png"), "--figure-steps", "2,3",
                                      "--figure-sampler", "dpmpp_3m_sde", "--out", str(tmp_path)])
    assert [r["sampler"] for r in result["rows"]] == ["euler_ancestral", "dpmpp_2m_sde"]
    for row in result["rows"]:
        assert row["iid_seconds"] > 0 and row["time_ratio"] == row["brownian_seconds"] / row["iid_seconds"]
    assert json.loads((tmp_path / "brownian-stability.json").read_text())["rows"] == result["rows"]
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The reported distance is that of the samplers themselves (independent recomputation).
    from scoreops.commands.runs import load_run
    model, _, sde, shape = load_run(str(tiny_run), False, torch.device("cpu"))
    runs = [samplers.dpmpp_2m_sde_sample(model, sde, None, 6, n, shape=shape, seed=seed, noise="brownian")
            for n in (3, 5)]
    a, b = (x.clamp(0, 1) for x in runs)
    want = float(((a - b) ** 2).mean(dim=(1, 2, 3)).sqrt().mean())
    assert result["rows"][1]["brownian"] == pytest.approx(want, rel=1e-5, abs=1e-7)


def test_equal_step_counts_give_zero_distance(tiny_run):
    result = brownian_stability.main(["--checkpoint", str(tiny_run), "--samplers", "dpmpp_3m_sde", "--pair", "4,4",
                                      "--samples", "4", "--threads", "1"])
    assert result["rows"][0]["iid"] == 0 and result["rows"][0]["brownian"] == 0


def test_bad_arguments(tiny_run):
    for argv in (["--samplers", "heun"], ["--pair", "3"], ["--pair", "a,b"], ["--samples", "0"]):
        with pytest.raises(SystemExit):
            brownian_stability.main(["--checkpoint", str(tiny_run), *argv])
