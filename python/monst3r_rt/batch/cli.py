"""``monst3r-rt batch``: the subcommand's options (the run / stream options are reused from
those subcommands' parsers, not redefined) and its entry point."""

from __future__ import annotations

import argparse
import sys
from typing import Any

# options of ``monst3r-rt run`` that batch does not take over (it has its own)
_NOT_COPIED = {"help", "input", "output", "overwrite", "quiet"}
# ``monst3r-rt stream`` options copied as they are (its --masks becomes --stream-masks)
_STREAM_COPIED = ("keep", "refine", "max_frames")


def add_parser(sub: Any, run: argparse.ArgumentParser, stream: argparse.ArgumentParser) -> None:
    """Register ``batch`` on the subparsers ``sub``, taking the run options from the ``run``
    subparser and the stream-only ones from the ``stream`` subparser."""
    b = sub.add_parser(
        "batch",
        help="reconstruct many videos (resumable; in-process or on a Ray cluster)",
        description="Each video goes to OUT_ROOT/<name>/ exactly as 'monst3r-rt run' (or "
        "'stream -o') writes it; finished videos with the same configuration are skipped; "
        "failures are listed in OUT_ROOT/batch_report.jsonl.",
    )
    b.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="video file, frame folder, glob ('clips/*.mp4') or text manifest "
                        "(.txt/.lst: one input per line)")  # fmt: skip
    b.add_argument("-o", "--output", required=True, metavar="OUT_ROOT", help="output root")
    b.add_argument("--mode", default="offline", choices=["offline", "stream"])
    b.add_argument("--ray", nargs="?", const="auto", metavar="auto|ADDRESS",
                   help="run on Ray (pip install 'monst3r-rt[cluster]'): 'auto' starts a local "
                        "Ray, an address joins a cluster; without it: in-process")  # fmt: skip
    b.add_argument("--workers", type=int, help="Ray actors (default: GPUs, else CPUs)")
    b.add_argument("--gpus-per-worker", type=float, default=1.0)
    b.add_argument("--max-retries", type=int, default=2,
                   help="retries of a video whose worker died")  # fmt: skip
    b.add_argument("--overwrite", action="store_true",
                   help="replace output folders that were not written by a batch")  # fmt: skip
    b.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    for action in run._actions:
        if action.dest not in _NOT_COPIED:
            b._add_action(action)  # shared with 'run', as argparse's parents= does
    for action in stream._actions:
        if action.dest in _STREAM_COPIED:
            b._add_action(action)
        elif action.dest == "masks":
            b.add_argument("--stream-masks", default=action.default, choices=action.choices,
                           help="--mode stream: dynamic masks")  # fmt: skip
    b.set_defaults(func=_batch, _offline_defaults={
        a.dest: a.default for a in run._actions if a.dest not in _NOT_COPIED
    }, _stream_defaults={
        **{a.dest: a.default for a in stream._actions if a.dest in _STREAM_COPIED},
        "stream_masks": next(a.default for a in stream._actions if a.dest == "masks"),
    })  # fmt: skip


def pipeline_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``run_many`` pipeline options of parsed ``batch`` arguments. Raises ValueError for an
    offline-only option given with ``--mode stream``, a stream-only one without it, and the Ray
    options (``--workers``, ``--gpus-per-worker``) without ``--ray``."""
    from ..align import AlignConfig

    ray_only = [flag for flag, v, default in (("--workers", args.workers, None),
                ("--gpus-per-worker", args.gpus_per_worker, 1.0)) if v != default]  # fmt: skip
    if ray_only and args.ray is None:
        raise ValueError(f"{', '.join(ray_only)}: only with --ray (in-process is one worker)")
    common = {k: getattr(args, k) for k in
              ("weights", "backend", "engine", "device", "precision", "size")}  # fmt: skip
    if args.mode == "offline":
        changed = [k for k, v in args._stream_defaults.items() if getattr(args, k) != v]
        if changed:
            flags = ", ".join("--" + k.replace("_", "-") for k in changed)
            raise ValueError(f"{flags}: only for --mode stream")
    if args.mode == "stream":
        shared = set(common)
        changed = [k for k, v in args._offline_defaults.items()
                   if k not in shared and getattr(args, k) != v]  # fmt: skip
        if changed:
            flags = ", ".join("--" + k.replace("_", "-") for k in changed)
            raise ValueError(f"{flags}: only for --mode offline")
        from ..stream import StreamConfig

        cfg = StreamConfig(keep=args.keep, masks=args.stream_masks, refine=args.refine)
        return {**common, "config": cfg, "max_frames": args.max_frames}
    return {
        **common,
        "graph": args.graph,
        "batch_size": args.batch_size,
        "align": AlignConfig(niter=args.niter, solver=args.solver),
        "flow": None if args.no_flow else args.flow,
        "masks": args.masks,
        "flow_weights": args.flow_weights,
        "real_time": args.real_time,
        "num_frames": args.num_frames,
        "stride": args.stride,
        "fps": args.fps,
    }


def _batch(args: argparse.Namespace) -> int:
    from .scheduler import run_many

    report = run_many(args.inputs, args.output, mode=args.mode, ray_address=args.ray,
                      workers=args.workers, gpus_per_worker=args.gpus_per_worker,
                      max_retries=args.max_retries, overwrite=args.overwrite,
                      progress=not args.quiet, **pipeline_options(args))  # fmt: skip
    print(report.table())
    if report.interrupted:
        print("monst3r-rt batch: interrupted; every finished folder is complete",
              file=sys.stderr)  # fmt: skip
        return 130
    return 1 if report.failed else 0
