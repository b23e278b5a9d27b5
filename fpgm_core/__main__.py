"""Entry point of ``python -m fpgm_core``."""

import sys

from .cli import main

sys.exit(main())
