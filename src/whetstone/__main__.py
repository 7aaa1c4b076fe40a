"""``python -m whetstone ...``: the same as the ``whetstone`` command."""

import sys

from .cli import main

sys.exit(main())
