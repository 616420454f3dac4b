"""Command line: ``python -m pytest_overlay clean`` removes what killed runs left behind."""

from __future__ import annotations

import argparse
import sys

from . import engines, testbed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytest_overlay", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("clean", help="remove the namespaces, daemons and state of runs whose pytest is gone "
                                      "(runs still going are left alone)")
    args = parser.parse_args(argv)
    if args.command == "clean":
        removed = testbed.sweep(report=print, cleaners=[engines.remove_run_files])
        print(f"clean: {removed} namespace(s) of dead runs removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
