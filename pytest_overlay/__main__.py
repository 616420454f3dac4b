"""Command line: ``python -m pytest_overlay clean`` removes what killed runs left behind;
``python -m pytest_overlay study`` reproduces the study and reports beside its figures."""

from __future__ import annotations

import argparse
import sys

from . import engines, testbed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytest_overlay", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    clean = commands.add_parser("clean", help="remove the namespaces, daemons and state of runs that are over "
                                              "(a run holds a lock for its whole life; live runs are left alone)")
    clean.add_argument("--force", action="store_true",
                       help="also remove what looks like ours but cannot be proven over (no lock to ask)")
    study = commands.add_parser("study", help="run the study's point-to-point and streaming experiments on the "
                                              "embedded testbed and report beside the published figures")
    study.add_argument("--out", default="study", help="directory for the results and the report. Default: %(default)r")
    study.add_argument("--report-only", action="store_true", help="rewrite the report from the results in --out")
    args = parser.parse_args(argv)
    if args.command == "clean":
        removed = testbed.sweep(report=print, cleaners=[engines.remove_run_files], force=args.force)
        print(f"clean: {removed} namespace(s) of runs that are over removed")
    if args.command == "study":
        from pathlib import Path

        from . import study as reproduction

        if args.report_only:
            reproduction.write_report(Path(args.out), [], 0)
            return 0
        return reproduction.Study(Path(args.out)).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
