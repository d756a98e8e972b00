"""The README's Python examples run as written.

Every ```python block of README.md runs, unchanged and in a fresh namespace, from a fresh folder
where the `scoreops train` lines of its section have written their run folders (with a tiny
model and two steps appended to the line, so that the checkpoint takes seconds). All blocks
run, not a chosen few: each is meant to be pasted as it stands. To keep them fast, the samplers'
step count and the ODE's tolerances, which the README leaves at their defaults, default here to
3 steps and 1e-2; an argument a block gives is passed through, and every call is bound to the
real signature first, so a block with a wrong argument, or any undefined name, fails. Where a
block shows a print's output as comment lines below it, the printed text must be that.
"""
import ast
import functools
import inspect
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import TINY_TRAINING

import scoreops
from scoreops import samplers
from scoreops.ops import backends

README = Path(__file__).resolve().parents[1] / "README.md"
PACKAGE_PARENT = str(Path(scoreops.__file__).resolve().parents[1])
TINY_SHAPE = (1, 8, 8)
# Test-time defaults of the arguments the README leaves at the library's.
FAST_DEFAULTS = {
    "em_sample": {"num_steps": 3},
    "milstein_sample": {"num_steps": 3},
    "pc_sample": {"num_steps": 3},
    "ode_sample": {"atol": 1e-2, "rtol": 1e-2},
    **{f"{name}_sample": {"num_steps": 3} for name in samplers.FEW_STEP_SAMPLERS},
}
DROP_IN = {"em_sample", "milstein_sample", "pc_sample", "ode_sample"}
# Sections whose examples this test exists for, and those that show a print's output: finding
# none there means the parser is broken.
EXPECTED_SECTIONS = {"Drop-in samplers", "Few-step samplers", "The fused ops"}
EXPECTED_OUTPUT_SECTIONS = {"The fused ops"}


@dataclass(frozen=True)
class Block:
    heading: str  # the nearest heading above the block
    language: str
    line: int  # README line of the block's first code line
    code: str


def _blocks(text: str) -> list[Block]:
    """The fenced code blocks of a markdown text."""
    blocks, heading, fence = [], "", None
    for number, line in enumerate(text.splitlines(keepends=True), start=1):
        if fence is None:
            if line.startswith("```"):
                fence = (line[3:].strip().lower(), number + 1, [])
            elif line.startswith("#"):
                heading = line.lstrip("#").strip()
        elif line.startswith("```"):
            blocks.append(Block(heading, fence[0], fence[1], "".join(fence[2])))
            fence = None
        else:
            fence[2].append(line)
    return blocks


BLOCKS = _blocks(README.read_text())
PYTHON_BLOCKS = [b for b in BLOCKS if b.language in ("python", "py", "python3")]


def _shown_output(code: str) -> list[str] | None:
    """The comment lines right below a top-level ``print(...)`` (what the README says it prints),
    or None when the block shows no output."""
    lines = code.splitlines()
    printed = [node.end_lineno for node in ast.parse(code).body
               if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)
               and isinstance(node.value.func, ast.Name) and node.value.func.id == "print"]
    shown = []
    for end in printed:
        for line in lines[end:]:
            if not line.startswith("# "):
                break
            shown.append(line[2:])
    return shown or None


def test_the_readme_has_python_examples_where_expected():
    assert EXPECTED_SECTIONS <= {b.heading for b in PYTHON_BLOCKS}, [b.heading for b in PYTHON_BLOCKS]
    assert EXPECTED_OUTPUT_SECTIONS <= {b.heading for b in PYTHON_BLOCKS if _shown_output(b.code)}


def test_shown_output_is_read_from_comments_below_a_print():
    code = "x = 1\nprint(x,\n      2)\n# 1 2\n# more\ny = 2  # not output\n# not output either\n"
    assert _shown_output(code) == ["1 2", "more"]
    assert _shown_output("print(1)  # inline\nz = 3\n") is None


def _run_training_lines(heading: str, folder: Path) -> None:
    """Run the `scoreops train` lines of the README's section ``heading`` in ``folder``, each with
    TINY_TRAINING appended (later options win)."""
    lines = [line.strip() for b in BLOCKS if b.language in ("bash", "console", "sh") and b.heading == heading
             for line in b.code.splitlines() if re.match(r"\s*(\$ )?scoreops train\b", line)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [PACKAGE_PARENT, os.environ.get("PYTHONPATH")]))}
    for line in lines:
        argv = shlex.split(line.removeprefix("$ "), comments=True)[1:]
        proc = subprocess.run([sys.executable, "-m", "scoreops", *argv, *TINY_TRAINING], cwd=folder, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{line}: {proc.stderr[-3000:]}"


@pytest.fixture
def fast_samplers(monkeypatch):
    """Patch the samplers with FAST_DEFAULTS; returns the (name, result) of every call."""
    calls = []

    def fast(name, real):
        signature = inspect.signature(real)

        @functools.wraps(real)
        def sampler(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)  # a wrong argument fails as in the real call
            for key, value in FAST_DEFAULTS[name].items():
                bound.arguments.setdefault(key, value)
            result = real(*bound.args, **bound.kwargs)
            calls.append((name, result))
            return result
        return sampler

    for name in FAST_DEFAULTS:
        wrapped = fast(name, getattr(samplers, name))
        monkeypatch.setattr(samplers, name, wrapped)
        monkeypatch.setattr(scoreops, name, wrapped, raising=False)  # scoreops.X is resolved lazily
    return calls


@pytest.fixture
def plain_environment(monkeypatch):
    """The environment of a user's shell: without conftest's TRITON_INTERPRET, which would list
    an interpreted Triton among the CPU backends."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    backends._backends_for.cache_clear()
    yield
    monkeypatch.undo()
    backends._backends_for.cache_clear()


@pytest.mark.slow  # a tiny training run where the section has one: ~15 s on 2 cores, mostly imports
@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[f"{b.heading}:{b.line}" for b in PYTHON_BLOCKS])
def test_readme_python_block_runs(block, tmp_path, fast_samplers, plain_environment, monkeypatch, capsys):
    _run_training_lines(block.heading, tmp_path)
    monkeypatch.chdir(tmp_path)
    # Blank lines first, so that a traceback names the README's own line numbers.
    code = compile("\n" * (block.line - 1) + block.code, str(README), "exec")
    exec(code, {"__name__": "__main__"})
    printed = capsys.readouterr().out
    if (shown := _shown_output(block.code)) is not None:
        assert printed.splitlines() == shown
    if block.heading in ("Drop-in samplers", "Few-step samplers"):
        if block.heading == "Drop-in samplers":
            assert {name for name, _ in fast_samplers} == DROP_IN
        for name, result in fast_samplers:
            samples = result.samples if isinstance(result, samplers.ODEResult) else result
            # 64 samples of the checkpoint's own shape, not the (1, 28, 28) default
            assert samples.shape == (64, *TINY_SHAPE), name
            assert torch.isfinite(samples).all(), name
