"""Command line: ``monst3r-rt doctor | --version``."""

from __future__ import annotations

import argparse
import sys

from ._version import __version__


def _doctor(args: argparse.Namespace) -> int:
    from .doctor import format_table, run_checks

    rows = run_checks()
    if args.json:
        import json
        from dataclasses import asdict

        print(json.dumps([asdict(r) for r in rows], indent=2))
    else:
        print(f"monst3r_rt {__version__}, Python {sys.version.split()[0]}")
        print(format_table(rows))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="monst3r-rt", description="MonST3R 4D reconstruction from video, accelerated."
    )
    parser.add_argument("--version", action="version", version=f"monst3r-rt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    doctor = sub.add_parser("doctor", help="show what will run on this machine")
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    doctor.set_defaults(func=_doctor)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
