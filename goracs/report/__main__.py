"""``python -m goracs.report SWEEP_DIR...``: the same as the console script ``goracs-report``."""

import sys

from goracs.report.cli import main

sys.exit(main())
