"""Smoke tests of the benchmarks: each runs at a tiny size and writes consistent JSON and markdown.

They check what the files say and that the derived numbers follow from the measured ones; they
time nothing.
"""
import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

try:  # installed: setup.py maps benchmarks/ to scoreops.benchmarks
    from scoreops.benchmarks import bench_samplers, bench_steps, common
except ModuleNotFoundError as e:  # a source checkout, run from the repository root
    if e.name != "scoreops.benchmarks":
        raise
    from benchmarks import bench_samplers, bench_steps, common

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
    """The markdown names the machine and has one table row per JSON row; returns the cells."""
    assert result["machine"]["device_name"] in md
    header = "| " + " | ".join(c.header for c in columns) + " |"
    lines = md.splitlines()
    start = lines.index(header)
    rows = [line for line in lines[start + 2:] if line.startswith("|")]
    assert len(rows) == len(result["rows"])
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


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
    rows = result["rows"]
    assert [(r["shape"], r["op"], r["backend"]) for r in rows] == [
        (shape, op, b) for shape in ("3x5x7", "64x1") for op in ops for b in backends]
    for r in rows:
        assert r["numel"] == math.prod(int(d) for d in r["shape"].split("x"))
        assert r["bytes_per_element"] == (16 if r["op"] == "langevin" else 12)
        assert r["fused_ms"] > 0 and r["eager_ms"] > 0 and r["copy_gbps"] > 0
        assert r["compile_ms"] is None and r["compile_aten_rng_ms"] is None and r["speedup_vs_compile"] is None
        assert r["fused_gbps"] == pytest.approx(r["bytes_per_element"] * r["numel"] / (r["fused_ms"] * 1e6))
        assert r["fraction_of_copy"] == pytest.approx(r["fused_gbps"] / r["copy_gbps"])
        assert r["speedup_vs_eager"] == pytest.approx(r["eager_ms"] / r["fused_ms"])
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
    assert result["settings"]["ode_tol"] == 1e-2
    rows = result["rows"]
    assert [(r["sampler"], r["variant"]) for r in rows] == [(s, v) for s in samplers for v in ("eager", "scoreops")]
    for r in rows:
        assert r["model"] == "tiny" and r["batch"] == 2
        assert r["seconds"] > 0 and r["model_s"] > 0
        assert r["samples_per_s"] == pytest.approx(2 / r["seconds"])
        parts = r["model_s"] + (r["update_s"] or 0.0) + r["overhead_s"]
        assert parts == pytest.approx(r["seconds"])
        assert r["overhead_per_step_ms"] == pytest.approx(1e3 * r["overhead_s"] / r["steps"])
        if r["sampler"] == "ode":
            assert r["update_s"] is None and r["steps"] >= 1 and r["nfe"] >= 6 * r["steps"]
        else:
            assert r["steps"] == 3 and r["nfe"] == 3 * (2 if r["sampler"] == "pc" else 1) and r["update_s"] > 0
    eager = {r["sampler"]: r["seconds"] for r in rows if r["variant"] == "eager"}
    for r in rows:
        assert r["speedup_vs_eager"] == pytest.approx(eager[r["sampler"]] / r["seconds"])
    cells = _check_markdown(md, result, bench_samplers.COLUMNS)
    assert [row[:3] for row in cells] == [[r["model"], r["sampler"], r["variant"]] for r in rows]


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
