"""``python -m scoreops``: the same as the ``scoreops`` command."""
import sys

from .cli import main

sys.exit(main())
