"""Reading the flags a model is built with: heads, task models and components take the parsed command
line (an ``argparse.Namespace``) or, in tests and tools, none at all."""
from __future__ import annotations


def arg(args, name: str, default):
    """``args.<name>``, or ``default`` when there are no args or the flag is not among them."""
    return getattr(args, name, default) if args is not None else default
