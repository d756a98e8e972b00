"""The commands' output folder, and output files that are written whole or not at all."""
from __future__ import annotations

import tempfile
from pathlib import Path

from ..training.checkpoint import atomic_write


def output_folder(path: str | Path) -> Path:
    """Create ``path`` if needed and check that a file can be written in it; raise OSError if not."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise OSError(f"cannot write to the output folder {out}: {e.strerror or e}") from e
    return out.resolve()


def write_samples(run, out: Path, info: dict) -> list[Path]:
    """Save a :class:`~scoreops.evaluation.compare.SampleRun` as ``samples-<label>.png`` (a grid of 8
    columns) and ``samples-<label>.safetensors`` (key ``samples``: the raw (N, C, H, W) float32
    tensor, not clamped; as metadata ``info``, the settings the run's sampler has, nfe and seconds).

    Both files or neither: each is written under a temporary name and renamed into place, and a
    failure (a full disk) removes the one already written.
    """
    from safetensors.torch import save_file

    from ..evaluation.figures import save_grid

    png, tensors = out / f"samples-{run.label}.png", out / f"samples-{run.label}.safetensors"
    metadata = {**{k: str(v) for k, v in info.items()}, **{k: str(v) for k, v in run.settings().items()},
                "nfe": str(run.nfe), "seconds": f"{run.seconds:.3f}"}
    samples = run.samples.detach().float().cpu().contiguous()
    atomic_write(png, lambda tmp: save_grid(samples, tmp))
    try:
        atomic_write(tensors, lambda tmp: save_file({"samples": samples}, str(tmp), metadata=metadata))
    except BaseException:
        png.unlink(missing_ok=True)
        raise
    return [png, tensors]
