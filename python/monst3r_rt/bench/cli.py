"""The ``monst3r-rt bench`` subcommand (registered by :mod:`monst3r_rt.cli`)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

__all__ = ["add_parser", "main", "parse_fraction"]


def parse_fraction(text: str) -> float:
    """``"10%"`` or ``"0.1"`` → 0.1."""
    try:
        v = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a percentage like 10% or a fraction like "
                                         f"0.1, got {text!r}") from None  # fmt: skip
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return v


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``bench`` to a subparsers object; returns the parser."""
    b = sub.add_parser("bench", help="measure speed and memory of every stage on this machine",
                       description="Speed and memory of every stage, with the official per-pair "
                       "forward measured side by side (see README, Benchmarking).")  # fmt: skip
    src = b.add_mutually_exclusive_group()
    src.add_argument("--weights", help="checkpoint path or Hub id to run")
    src.add_argument(
        "--random",
        action="store_true",
        help="full-size MonST3R architecture with random weights (no download)",
    )
    b.add_argument("--size", default="512x288", help="WxH, multiples of 16 (default 512x288)")
    b.add_argument(
        "--backend",
        default="torch,onnxruntime,tensorrt",
        help="comma-separated: torch, onnxruntime, tensorrt",
    )
    b.add_argument("--engine", help="export folder (monst3r-rt export) for onnxruntime/tensorrt")
    b.add_argument(
        "--export",
        action="store_true",
        help="without --engine: export this run's network to a temporary folder "
        "for the onnxruntime/tensorrt rows (minutes at full size)",
    )
    b.add_argument("--precision", default="fp32", help="comma-separated: fp32, fp16, bf16")
    b.add_argument("--batch", default="1", help="comma-separated batch sizes, e.g. 1,4,16")
    b.add_argument(
        "--stage",
        default=None,
        help="comma-separated: encoder, decoder, pair, stream, align, pipeline "
        "(default: all; --quick: encoder,decoder,pair,stream)",
    )
    b.add_argument("--frames", type=int, help="frames of the stream/align/pipeline rows")
    b.add_argument("--clip", help="video or image folder for stream/pipeline (default: generated)")
    b.add_argument(
        "--scale",
        action="store_true",
        help="align/pipeline at N = 16, 32, 65, 128 frames (how cost grows)",
    )
    b.add_argument("--warmup", type=int, default=1, help="unmeasured calls per row")
    b.add_argument("--repeat", type=int, default=5, help="measured calls per row")
    b.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    b.add_argument("--json", dest="json_out", help="write the results (versioned schema)")
    b.add_argument("--compare", help="an earlier --json: print per-row ratios")
    b.add_argument(
        "--fail-above",
        type=parse_fraction,
        default=0.10,
        help="with --compare: exit 1 when a row is slower by more (default 10%%)",
    )
    b.add_argument(
        "--quick",
        action="store_true",
        help="encoder, decoder, pair, stream; one batch size; 1 warm-up, 3 repeats",
    )
    b.add_argument("--config", choices=["tiny"], help=argparse.SUPPRESS)  # tests
    b.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    b.set_defaults(func=main)
    return b


TINY = dict(pos_embed="RoPE100", img_size=(64, 64), head_type="linear", output_mode="pts3d",
            enc_embed_dim=32, enc_depth=2, enc_num_heads=2, dec_embed_dim=32, dec_depth=2,
            dec_num_heads=2)  # fmt: skip


def main(args: argparse.Namespace) -> int:
    """Run the benchmark of parsed ``args``; 0, 1 (a regression beyond ``--fail-above``),
    2 (bad options, raised as ValueError to the CLI) or 130 (interrupted)."""
    from . import (
        compare,
        format_comparison,
        format_header,
        format_scale,
        format_table,
        load_json,  # fmt: skip
        machine_info,
        make_document,
        run,
        save_json,
    )
    from .runner import STAGES, check_options

    stages = args.stage if args.stage is not None else STAGES
    kw = dict(weights=args.weights, random=args.random, size=args.size, backends=args.backend,
              precisions=args.precision, batches=args.batch, stages=stages, frames=args.frames,
              warmup=args.warmup, repeat=args.repeat, device=args.device, engine=args.engine,
              scale=args.scale, quick=args.quick, clip=args.clip,
              config=TINY if args.config == "tiny" else None)  # fmt: skip
    check_options(**kw)  # every option before any work
    if args.json_out:  # the results must not be lost at the end of a long run
        folder = os.path.dirname(os.path.abspath(args.json_out))
        if os.path.isdir(args.json_out):
            raise ValueError(f"--json {args.json_out}: is a folder; give a file name")
        if not os.path.isdir(folder):
            raise ValueError(f"--json {args.json_out}: folder {folder} does not exist")
    old = load_json(args.compare) if args.compare else None
    machine = machine_info()
    print(format_header(machine))
    records: list[Any] = []
    settings: dict[str, Any] = {}
    t0 = time.perf_counter()
    interrupted = False
    try:
        run(**kw, export=args.export, progress=not args.quiet, on_record=records.append,
            settings=settings)  # fmt: skip
    except KeyboardInterrupt:
        interrupted = True
        print(f"\nmonst3r-rt bench: interrupted; {len(records)} rows measured", file=sys.stderr)
    elapsed = time.perf_counter() - t0
    what = "random weights" if args.random else f"weights {args.weights}"
    print(
        f"\n{settings.get('device', args.device)}, {args.size}, {what}, "
        f"{elapsed:.0f} s{' (interrupted)' if interrupted else ''}"
    )
    print(format_table(records))
    scale = format_scale(records)
    if scale:
        print("\nHow cost grows with the number of frames\n" + scale)
    if args.json_out:
        save_json(make_document(records, machine, settings, elapsed, interrupted), args.json_out)
        print(f"wrote {args.json_out}")
    if interrupted:
        return 130
    if old is not None:
        c = compare(old, records, args.fail_above)
        print(f"\nagainst {args.compare} (fail above +{args.fail_above:.0%})")
        print(format_comparison(c))
        if c.regressed:
            print(f"{len(c.regressed)} row(s) regressed: {', '.join(c.regressed)}",
                  file=sys.stderr)  # fmt: skip
            return 1
    return 0
