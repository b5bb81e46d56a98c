"""``monst3r-rt eval``: the paper's evaluation on a dataset folder (:func:`~.runner.evaluate`)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .datasets import DATASETS

__all__ = ["add_parser"]


def _eval(args: argparse.Namespace) -> int:
    from .runner import evaluate
    from .score import markdown_table

    seqs = [s for s in args.sequences.split(",") if s] if args.sequences else None
    pipeline = stream_factory = fingerprint = None
    if args.predictions is None:
        from ..batch import options_fingerprint

        # what the runs are made of; its fingerprint decides whether a folder is resumed
        options = {
            "weights": args.weights,
            "backend": args.backend,
            "engine": args.engine,
            "device": args.device,
            "precision": args.precision,
            "size": args.size,
        }
        if args.mode == "offline":
            from ..align import AlignConfig
            from ..pipeline import Pipeline

            options["align"] = AlignConfig(niter=args.niter)
            pipeline = Pipeline(**options, cli=True)  # checks every option before any work
        else:
            from .runner import make_stream_factory

            stream_factory = make_stream_factory(**options, cli=True)
        fingerprint = options_fingerprint(args.mode, options)

    say = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr))
    res = evaluate(args.dataset, args.root, args.output, mode=args.mode,
                   predictions=args.predictions, sequences=seqs, align=args.align,
                   pipeline=pipeline, stream_factory=stream_factory, fingerprint=fingerprint,
                   overwrite=args.overwrite, log=say)  # fmt: skip
    print(markdown_table({args.dataset: res["mean"]}), end="")
    for s, why in res["skipped"].items():
        print(f"skipped {s}: {why}")
    print(f"results: {res['paths']['table']}, {res['paths']['csv']}, {res['paths']['json']}")
    return 0


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``eval`` to a subparsers object; returns the parser."""
    from ..cli import add_network_options

    e = sub.add_parser("eval", help="the paper's evaluation: run or score a dataset's sequences",
                       description="Run the method per sequence (resumable: complete sequence "
                       "folders of the same configuration are kept and not run again; another "
                       "configuration's are refused unless --overwrite) or score existing "
                       "output folders "
                       "(--predictions: this package's or the official demo.py's), then write "
                       "metrics.csv, metrics.json and table.md (the paper's numbers beside "
                       "ours) into -o.")  # fmt: skip
    e.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    e.add_argument("--root", required=True, help="the dataset's folder (layout: README)")
    e.add_argument("-o", "--output", required=True, help="results folder (<seq>/ per run)")
    e.add_argument("--mode", default="offline", choices=["offline", "stream"])
    e.add_argument("--predictions", help="score existing output folders DIR/<seq>/ instead")
    e.add_argument("--sequences", help="comma-separated subset of the official sequences")
    e.add_argument("--align", default="lad", choices=["lad", "median", "scale_shift"],
                   help="depth alignment (lad: the paper's scale & shift)")  # fmt: skip
    add_network_options(e)
    e.add_argument("--niter", type=int, default=300, help="alignment iterations (offline)")
    e.add_argument("--overwrite", action="store_true",
                   help="recompute sequence folders written by another configuration (mode, "
                        "weights, options or version) instead of refusing them")  # fmt: skip
    e.add_argument("-q", "--quiet", action="store_true", help="no per-sequence progress lines")
    e.set_defaults(func=_eval)
    return e
