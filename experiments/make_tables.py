"""Paper-style tables and plots from sweep folders: a thin wrapper over ``goracs-report`` (same options).

    python experiments/make_tables.py outputs/sweeps/budget_sweep [--metric test/ndcg@10] [--partial] [--out DIR]
"""

import sys

from goracs.report.cli import main

if __name__ == "__main__":
    sys.exit(main())
