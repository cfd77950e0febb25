"""Methods table: every training method on the arithmetic world, same SFT start, same budget, side by side.

    python bench/methods.py --quick                 # smoke run (make test runs it)
    python bench/methods.py --out docs/methods      # the full table (under two hours on 2 cores)

The same as `selfplay bench methods`; what it runs and writes: studies/methods_table/__init__.py. Its last
line is one JSON object with one entry per method.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from studies.methods_table import main

if __name__ == "__main__":
    main()
