"""``python -m whetstone ...``: the same as the ``whetstone`` command."""

import sys

from .cli.main import main

sys.exit(main())
