"""``python -m ragbus.runtime.cli``: the same as the ``ragbus`` command."""

import sys

from . import main

sys.exit(main())
