"""Command-line plumbing shared by the scripts."""

from __future__ import annotations

import argparse
from typing import NoReturn


class OptionParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line naming the option (no usage block above it)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see --help)\n")
