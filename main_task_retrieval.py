"""Entry point for text-video retrieval. So far it parses and checks the flags; training and
evaluation are wired in by the engine (issue 5)."""
from __future__ import annotations

import sys
from typing import Sequence

from engine.options import parse_args


def get_args(argv: Sequence[str] | None = None):
    """The parsed flags (``--config FILE.yaml`` first, then the command line on top)."""
    return parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    from dataloaders import DataError

    try:
        get_args(argv)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
