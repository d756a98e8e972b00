"""``python -m scoreops.train ...`` (e.g. under torchrun): the same as ``scoreops train ...``.

An entry point above the CLI, so that no training module imports it.
"""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
