"""The command line's argument parser, on its own so that `selfplay` (launch/cli.py) and the scripts that
reuse a sub-command's options (studies/methods_table, bench/methods.py) share it without importing each other.

    parser = OneLineParser(prog="selfplay", description="...")
"""

from __future__ import annotations

import argparse
from typing import NoReturn


class OneLineParser(argparse.ArgumentParser):
    """Usage errors in one line that names the problem and where to read more (sub-commands inherit it)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")
