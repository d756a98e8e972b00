"""Shared benchmark helpers: device naming, timing and result files.

Every benchmark measures its variants side by side in one process, repeats each timing and
reports its median and spread; the ratios between medians are the result, the absolute times
describe the machine they ran on. A row whose timings spread too wide, or whose figures are
impossible, is marked unreliable (:func:`judge`) rather than printed as a result.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import logging
import math
import os
import platform
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

import scoreops
from scoreops.training.checkpoint import atomic_write

# torch.utils.benchmark imports cpp_extension, which warns on every CPU-only machine that it
# found no CUDA runtime; the benchmarks compile nothing with it.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
from torch.utils import benchmark  # noqa: E402

COPY_BYTES_PER_ELEMENT = 8  # dst.copy_(src) in float32: one read, one write


# --------------------------------------------------------------------------- the machine
SIMD_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "asimd", "sve")  # the ones the kernels can use


def _cpuinfo(*keys: str) -> str | None:
    """The value of the first /proc/cpuinfo line whose key starts with one of ``keys`` (Linux only)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(keys):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or what :mod:`platform` knows elsewhere)."""
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def _kib(size: str) -> str:
    """sysfs's ``"266240K"`` as ``"260 MiB"``; other spellings unchanged."""
    if not (size.endswith("K") and size[:-1].isdigit()):
        return size
    kib = int(size[:-1])
    return f"{kib / 1024:g} MiB" if kib >= 1024 else f"{kib} KiB"


def cpu_features() -> dict[str, Any]:
    """The CPU's vector extensions (of :data:`SIMD_FLAGS`) and data-cache sizes, as Linux reports them.

    The caches matter to a reader: where the last level holds a benchmark's tensors, the copy
    bandwidth measured is the cache's, not the memory's.
    """
    flags = set((_cpuinfo("flags", "Features") or "").split())
    caches = {}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            if (index / "type").read_text().strip() != "Instruction":
                caches[f"L{(index / 'level').read_text().strip()}"] = _kib((index / "size").read_text().strip())
        except OSError:
            continue
    return {"simd": [f for f in SIMD_FLAGS if f in flags], "caches": caches}


def device_name(device: torch.device | str) -> str:
    """Human-readable name of ``device``: the GPU's name, or the CPU model for ``cpu``."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


def slug(name: str) -> str:
    """``name`` as a file-name fragment: ``"Intel(R) Xeon(R) Gold 6338"`` -> ``"intel-xeon-gold-6338"``."""
    name = re.sub(r"\((r|tm)\)", "", name.lower())
    return re.sub(r"[^a-z0-9]+", "-", name).strip("-") or "unknown"


def device_slug(device: torch.device | str) -> str:
    """The file-name fragment that names ``device`` in result files."""
    return slug(device_name(device))


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info(device: torch.device | str) -> dict[str, Any]:
    """What a result depends on: device, host, library versions, threads, date and load."""
    device = torch.device(device)
    info = {
        "device": device.type,
        "device_name": device_name(device),
        "host_cpu": cpu_model(),
        "host_cpu_features": cpu_features(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _package_version("triton"),
        "scoreops": scoreops.__version__,
        "platform": platform.platform(),
        # Other processes on the machine slow every variant, though not always alike: say how busy it was.
        "load_average": load_average(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(cuda=torch.version.cuda, capability=f"{props.major}.{props.minor}",
                    memory_gib=round(props.total_memory / 2**30, 1), multiprocessors=props.multi_processor_count)
    return info


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages, where the platform has them."""
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None


def describe_machine(info: dict[str, Any]) -> str:
    """One markdown line naming the machine of :func:`machine_info` (and the load at the end, once known)."""
    if info["device"] == "cuda":
        where = f"**{info['device_name']}** (CUDA {info['cuda']}, host {info['host_cpu']})"
    else:
        features = info["host_cpu_features"]
        caches = ", ".join(f"{level} {size}" for level, size in features["caches"].items())
        where = f"**{info['device_name']}** ({'; '.join(filter(None, (', '.join(features['simd']), caches)))})"
    loads = [f"{when} {', '.join(f'{v:g}' for v in info[key])}"
             for when, key in (("at start", "load_average"), ("at end", "load_average_end")) if info.get(key)]
    return (f"Machine: {where}, {info['cpu_count']} CPUs, {info['torch_threads']} torch threads; "
            f"torch {info['torch']}, triton {info['triton']}, Python {info['python']}; {info['date']}; "
            f"load average {'; '.join(loads) or 'n/a'}.")


def prepare(args: argparse.Namespace) -> tuple[torch.device, dict[str, float]]:
    """Apply the common arguments: the device, the output folder, torch's thread count, and the
    timing settings; checks ``--max-rel-iqr``.

    Returns the device and ``{"rounds": ..., "min_run_time": ...}`` for :func:`median_times`.
    """
    device = resolve_device(args.device)
    if not 0 < args.max_rel_iqr < math.inf:
        raise ValueError(f"--max-rel-iqr must be a positive fraction such as 0.1, got {args.max_rel_iqr}")
    if args.out is None:
        args.out = default_out(args.quick)
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    return device, timing_settings(args)


def resolve_device(name: str) -> torch.device:
    """``--device`` value to a device: ``auto`` is the GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but torch sees no CUDA GPU")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu, cuda or auto, got {name!r}")
    return device


# --------------------------------------------------------------------------- timing
# A spread needs this many repeats; the command line asks for at least as many.
MIN_REPEATS = 3
# Above this relative interquartile range a timing is too noisy to read a ratio from.
DEFAULT_MAX_REL_IQR = 0.10
SPREAD_MEASURE = ("rel_iqr: (75th - 25th percentile) / median of a timing's repeats, percentiles by linear "
                  "interpolation between the sorted repeats")


def _percentile(ordered: Sequence[float], q: float) -> float:
    """The ``q``-quantile (0 <= q <= 1) of sorted values, linearly interpolated between neighbours."""
    pos = q * (len(ordered) - 1)
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def median_and_rel_iqr(samples: Iterable[float]) -> tuple[float, float]:
    """The median of ``samples`` and their relative interquartile range ``(q75 - q25) / median``.

    The spread is NaN where the median is not positive (no time can be). Raises ``ValueError``
    on no samples.
    """
    ordered = sorted(samples)
    if not ordered:
        raise ValueError("a timing needs at least one sample")
    median = _percentile(ordered, 0.5)
    iqr = _percentile(ordered, 0.75) - _percentile(ordered, 0.25)
    return median, iqr / median if median > 0 else math.nan


@dataclass(frozen=True)
class Timing:
    """Repeated measurements of one duration: seconds per call, one sample per repeat."""
    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        """Median seconds per call: the figure every derived number is computed from."""
        return median_and_rel_iqr(self.samples)[0]

    @property
    def rel_iqr(self) -> float:
        """Relative interquartile range of the repeats (see :func:`median_and_rel_iqr`)."""
        return median_and_rel_iqr(self.samples)[1]

    def as_json(self) -> dict[str, Any]:
        """The timing for a results file (``rel_iqr`` None where undefined)."""
        spread = self.rel_iqr
        return {"median_s": self.median, "rel_iqr": spread if math.isfinite(spread) else None,
                "repeats": len(self.samples), "samples_s": list(self.samples)}


def median_times(fns: dict[str, Callable[[], object]], *, rounds: int = 5,
                 min_run_time: float = 0.2) -> dict[str, Timing]:
    """Seconds per call of each function, measured in interleaved rounds: one sample per round.

    Each round times every function once with ``torch.utils.benchmark.Timer.blocked_autorange``
    (which synchronises the GPU around each block of calls) and keeps the median of its blocks;
    interleaving the rounds spreads a change in the machine's load over all variants instead of
    one, and the spread over rounds shows how much the load moved them. Call each function once
    before (warm-up: compilation, allocator, caches).

    Args:
        fns: name -> function of no arguments.
        rounds: interleaved measurement rounds, the repeats of each timing.
        min_run_time: seconds of measurement per function and round.
    Returns:
        name -> :class:`Timing` with ``rounds`` samples.
    """
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            timer = benchmark.Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
            samples[name].append(timer.blocked_autorange(min_run_time=min_run_time).median)
    return {name: Timing(tuple(ts)) for name, ts in samples.items()}


def median_run_times(fns: dict[str, Callable[[], object]], device: torch.device | str, *,
                     repeats: int = 5) -> dict[str, Timing]:
    """Seconds per call of long-running functions (whole sampler runs), interleaved.

    Each function is called ``repeats`` times, round-robin, each call timed alone between two
    device synchronisations; for calls of a second or more a host clock is exact enough and
    :func:`median_times`' block-size search would cost extra runs. Warm up each function first.
    Returns name -> :class:`Timing` with ``repeats`` samples.
    """
    device = torch.device(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: Timing(tuple(ts)) for name, ts in times.items()}


def synchronize(device: torch.device | str) -> None:
    """Wait for the work queued on ``device`` (a no-op on the CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def cuda_graphed(fn: Callable[[], object]) -> Callable[[], None]:
    """Capture ``fn`` (no arguments, CUDA work only) as a CUDA graph; returns its replay.

    ``fn`` runs once on a side stream first, as capture requires (kernels load, the allocator
    warms up); the replay then reruns the captured kernels on the same buffers with no Python.
    """
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def ratio(num: float, den: float) -> float:
    """``num / den``, but infinite or NaN instead of an error where ``den`` is 0, for :func:`judge`
    to mark: a timing of 0 must void a row, not stop the run."""
    if den == 0:
        return math.copysign(math.inf, num) if num else math.nan
    return num / den


def gb_per_s(num_bytes: float, seconds: float) -> float:
    """Throughput in GB/s (10**9 bytes per second)."""
    return ratio(num_bytes, seconds) / 1e9


# --------------------------------------------------------------------------- reliability
@dataclass(frozen=True)
class Figure:
    """A figure of a result row and the values it can take.

    Args:
        key: the row key.
        low: the lowest possible value: excluded when ``strict`` (a time or a ratio is above 0),
            included otherwise (an overhead may be 0).
        high: the highest possible value, included (a share of a run is at most 1).
        voids: keys of figures computed from this one, void with it.
    """
    key: str
    low: float = 0.0
    high: float = math.inf
    strict: bool = True
    voids: tuple[str, ...] = ()

    def why_impossible(self, value: float) -> str | None:
        """None when ``value`` is possible, else a short reason naming the key."""
        if not math.isfinite(value):
            return f"{self.key} is {value}"
        if value > self.high:
            return f"{self.key} {value:.3g} > {self.high:g}"
        if value < self.low or (self.strict and value == self.low):
            return f"{self.key} {value:.3g} {'<=' if self.strict else '<'} {self.low:g}"
        return None


def judge(row: dict[str, Any], timings: dict[str, Timing], figures: Iterable[Figure],
          max_rel_iqr: float) -> dict[str, Any]:
    """Decide, in place, whether a measured row is a result; returns ``row``.

    The row is unreliable when a timing it is computed from has fewer than :data:`MIN_REPEATS`
    repeats or a relative interquartile range above ``max_rel_iqr``, or when one of its
    ``figures`` is impossible (:meth:`Figure.why_impossible`). An impossible figure, and the ones
    it voids, are set to None and their values kept under ``row["impossible"]``, so that no
    table or reader takes them for a result.

    Args:
        row: the row's figures, computed from the medians of ``timings``.
        timings: name (as the reasons print it) -> the row's :class:`Timing`.
        figures: the row's figures that have bounds; keys missing or None in ``row`` are skipped.
        max_rel_iqr: the widest relative interquartile range a reliable timing may have.
    Adds to ``row``: ``timings`` (name -> :meth:`Timing.as_json`), ``rel_iqr`` (the widest of
    them; None when one is undefined), ``reliable``, ``unreliable_reasons`` (short texts) and
    ``impossible`` (key -> value, non-finite values as strings).
    """
    reasons = []
    fewest = min(len(t.samples) for t in timings.values())
    if fewest < MIN_REPEATS:
        reasons.append(f"{fewest} repeats < {MIN_REPEATS}")
    spreads = {name: t.rel_iqr for name, t in timings.items()}
    wide = [f"{name} {format_percent(spread) if math.isfinite(spread) else 'undefined'}"
            for name, spread in spreads.items() if not spread <= max_rel_iqr]  # NaN (a median <= 0) fails too
    if wide:
        reasons.append(f"rel. IQR > {format_percent(max_rel_iqr)}: {', '.join(wide)}")
    impossible = {}
    for figure in figures:
        value = row.get(figure.key)
        why = None if value is None else figure.why_impossible(value)
        if why is None:
            continue
        reasons.append(why)
        for key in (figure.key, *figure.voids):
            if row.get(key) is not None:
                impossible[key] = row[key] if math.isfinite(row[key]) else str(row[key])
                row[key] = None
    row.update(timings={name: t.as_json() for name, t in timings.items()},
               rel_iqr=max(spreads.values()) if all(map(math.isfinite, spreads.values())) else None,
               reliable=not reasons, unreliable_reasons=reasons, impossible=impossible)
    return row


def reliability_summary(rows: Iterable[dict[str, Any]], max_rel_iqr: float) -> dict[str, int]:
    """Counts over the rows :func:`judge` marked (rows of failed cases are not counted): ``rows``,
    ``unreliable``, and among those ``wide_spread``, ``impossible`` and ``too_few_repeats``."""
    judged = [r for r in rows if "reliable" in r]
    return {
        "rows": len(judged),
        "unreliable": sum(not r["reliable"] for r in judged),
        "wide_spread": sum(r["rel_iqr"] is None or r["rel_iqr"] > max_rel_iqr for r in judged),
        "impossible": sum(bool(r["impossible"]) for r in judged),
        "too_few_repeats": sum(min(t["repeats"] for t in r["timings"].values()) < MIN_REPEATS for r in judged),
    }


def describe_reliability(summary: dict[str, int], max_rel_iqr: float) -> str:
    """One sentence on :func:`reliability_summary`'s counts, for the tables and the console."""
    if not summary["rows"]:
        return "Reliability: no row was measured."
    if not summary["unreliable"]:
        return (f"Reliability: all {summary['rows']} measured rows are reliable (every timing's rel. IQR within "
                f"{format_percent(max_rel_iqr)}, no impossible figure).")
    causes = {"wide_spread": f"with a timing's rel. IQR above {format_percent(max_rel_iqr)}",
              "impossible": f"with an impossible figure (shown as `{INVALID}`)",
              "too_few_repeats": f"with fewer than {MIN_REPEATS} repeats"}
    counted = "; ".join(f"{summary[kind]} {text}" for kind, text in causes.items() if summary[kind])
    return (f"**Reliability: {summary['unreliable']} of {summary['rows']} measured rows are unreliable** "
            f"({counted}): their figures are not results; rerun on a quieter machine.")


def reliability_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings entries that say how rows were judged: the spread measure and its limit."""
    return {"spread_measure": SPREAD_MEASURE, "max_rel_iqr": args.max_rel_iqr, "min_repeats": MIN_REPEATS}


# --------------------------------------------------------------------------- sizes
def split_list(text: str) -> list[str]:
    """The non-empty, stripped items of a comma list: ``"a, b,"`` -> ``["a", "b"]``."""
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_shape(text: str) -> tuple[int, ...]:
    """A size from the command line: a shape ``64x1x28x28`` or an element count ``2^24`` / ``4096``.

    An element count n becomes ``(64, n // 64)`` (64 samples) when 64 divides it, else ``(1, n)``.
    """
    text = text.strip().lower()
    try:
        if "x" in text:
            shape = tuple(int(d) for d in text.split("x"))
        else:
            base, caret, power = text.partition("^")
            numel = int(base) ** int(power) if caret else int(base)
            shape = (64, numel // 64) if numel % 64 == 0 else (1, numel)
    except ValueError:
        raise ValueError(f"size must be a shape like 64x1x28x28 or an element count like 2^24, got {text!r}") from None
    if not shape or min(shape) <= 0:
        raise ValueError(f"size must have positive dimensions, got {text!r}")
    return shape


def format_shape(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape)


def default_out(quick: bool) -> str:
    """Where results go without ``--out``: smoke runs apart from the committed tables."""
    return "runs/bench-quick" if quick else "benchmarks/results"


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every benchmark takes: ``--out``, ``--device``, ``--quick``, ``--threads``, ``--rounds``,
    ``--min-run-time`` (see :func:`prepare`)."""
    parser.add_argument("--out", default=None,
                        help=f"folder for the JSON and markdown results (default: {default_out(False)}; "
                             f"{default_out(True)} with --quick, so that a smoke run never replaces the tables)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (the GPU when there is one; default)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and short timings: a smoke run, not a result")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--rounds", type=int, default=None,
                        help=f"interleaved timing rounds, the repeats of each timing (default 5, {MIN_REPEATS} "
                             f"with --quick; at least {MIN_REPEATS})")
    parser.add_argument("--min-run-time", type=float, default=None,
                        help="seconds of timing per variant and round (default 0.2, 0.01 with --quick)")
    parser.add_argument("--max-rel-iqr", type=float, default=DEFAULT_MAX_REL_IQR,
                        help="a row whose timings spread wider than this relative interquartile range is marked "
                             "unreliable (default: %(default)s)")


def timing_settings(args: argparse.Namespace) -> dict[str, float]:
    """``rounds`` and ``min_run_time`` from the parsed common arguments."""
    rounds = args.rounds if args.rounds is not None else (MIN_REPEATS if args.quick else 5)
    min_run_time = args.min_run_time if args.min_run_time is not None else (0.01 if args.quick else 0.2)
    if rounds < MIN_REPEATS or min_run_time <= 0:
        raise ValueError(f"--rounds must be >= {MIN_REPEATS} (a spread needs that many repeats) and "
                         f"--min-run-time > 0, got {rounds} and {min_run_time}")
    return {"rounds": rounds, "min_run_time": min_run_time}


# --------------------------------------------------------------------------- result files
@dataclass(frozen=True)
class Column:
    """One column of a markdown table: the row key, its header, and how to print its value
    (a ``str.format`` pattern or a function of the value)."""
    key: str
    header: str
    fmt: str | Callable[[Any], str] = "{}"

    def cell(self, row: dict[str, Any]) -> str:
        if self.key in row.get("impossible", ()):
            return INVALID
        value = row.get(self.key)
        if value is None:
            return "-"
        return self.fmt(value) if callable(self.fmt) else self.fmt.format(value)


def format_percent(fraction: float) -> str:
    """A fraction as a percentage of at least three significant digits: 0.1 -> ``"10.0%"``,
    9.23 -> ``"923%"``, 12.6 -> ``"1260%"``."""
    percent = 100 * fraction
    # "#" keeps trailing zeros (10.0, not 10) but also the point that rounding up to 100 leaves.
    return f"{percent:.0f}%" if abs(percent) >= 100 else f"{percent:#.3g}".rstrip(".") + "%"


# What a table prints for a figure the timings make impossible (see :func:`judge`).
INVALID = "invalid"


def _reliable_cell(reasons: list[str]) -> str:
    return "**no**: " + "; ".join(reasons) if reasons else "yes"


# The last columns of every benchmark's table, before ``error``: the widest spread and the verdict.
RELIABILITY_COLUMNS = [Column("rel_iqr", "rel. IQR", format_percent),
                       Column("unreliable_reasons", "reliable", _reliable_cell)]


def format_count(n: int) -> str:
    """An element count for a table: ``2^22`` for a power of two, else the number (``50176``)."""
    return f"2^{n.bit_length() - 1}" if n > 0 and n & (n - 1) == 0 else str(n)


def markdown_table(rows: Iterable[dict[str, Any]], columns: Sequence[Column], header: bool = True) -> str:
    """A GitHub markdown table of ``rows`` (missing values print as ``-``); its rows alone without ``header``."""
    lines = ["| " + " | ".join(c.header for c in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"] if header else []
    lines += ["| " + " | ".join(c.cell(row) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_results(out_dir: str | os.PathLike, name: str, title: str, info: dict[str, Any],
                  settings: dict[str, Any], rows: list[dict[str, Any]], columns: Sequence[Column],
                  notes: str = "", finished: bool = True) -> tuple[Path, Path]:
    """Write ``<name>-<device slug>.json`` and ``.md`` under ``out_dir``; returns their paths.

    The JSON holds the machine (:func:`machine_info`, plus the load average at the end), the
    settings, ``finished``, every row and the :func:`reliability_summary` (by ``settings["max_rel_iqr"]``);
    the markdown holds the title, the machine line, the table of ``columns``, the summary
    sentence and ``notes``. A benchmark writes after every case with
    ``finished=False``, so that a run stopped by a time limit still leaves what it measured.
    """
    # Written when the run is over: the load then says whether other work shared the machine with it.
    info = {**info, "load_average_end": load_average()}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{name}-{slug(info['device_name'])}"
    json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
    # Replaced whole, never half-written: a time limit may stop the run at any moment.
    summary = reliability_summary(rows, settings["max_rel_iqr"])
    result = {"benchmark": name, "finished": finished, "machine": info, "settings": settings, "rows": rows,
              "reliability": summary}
    atomic_write(json_path, lambda tmp: tmp.write_text(json.dumps(result, indent=1) + "\n"))
    parts = [f"# {title}", describe_machine(info), markdown_table(rows, columns),
             describe_reliability(summary, settings["max_rel_iqr"])]
    if not finished:
        parts.insert(2, "**Partial results: the run stopped before its last case.**")
    if notes:
        parts.append(notes.strip())
    atomic_write(md_path, lambda tmp: tmp.write_text("\n\n".join(parts) + "\n"))
    return json_path, md_path


def error_text(e: BaseException) -> str:
    """One line naming an exception, for the ``error`` column of a case that failed."""
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {first}"
