"""The bodies of the ``scoreops`` commands, one module per command, each with a ``run`` that
returns the output folder; :mod:`scoreops.cli` parses the arguments and calls it.

Shared by several commands: :mod:`.outputs` (the output folder, and output files written whole
or not at all) and :mod:`.runs` (a trained run's model, SDE, data and loss log).
"""
from . import bench, compare, demo, figures, import_tutorial, sample, train

__all__ = ["bench", "compare", "demo", "figures", "import_tutorial", "sample", "train"]
