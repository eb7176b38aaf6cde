"""
C{python -m ocm.client}: the interactive front end on a terminal, the
scripted one otherwise.
"""

from __future__ import annotations

import sys

from ocm.client.options import parse_args


def main(argv: list[str] | None = None) -> int:
    """Entry point of C{python -m ocm.client}."""
    args = parse_args(argv)
    if sys.stdin.isatty() and sys.stdout.isatty() and not args.list:
        from ocm.client.interactive import run_interactive

        return run_interactive(args)
    from ocm.client.app import run_scripted

    return run_scripted(args)
