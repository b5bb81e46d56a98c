"""Command line: ``monst3r-rt run | stream | view | export | build-engine | verify-engine |
bench | eval | batch | doctor | --version``."""

from __future__ import annotations

import argparse
import sys
import time

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


# errors a user can fix: printed as one line, exit status 2, no traceback
def _user_errors() -> tuple[type[BaseException], ...]:
    from .frames import FrameError

    errors: list[type[BaseException]] = [FrameError, FileExistsError, FileNotFoundError, ValueError]
    try:
        from .network import CheckpointError

        errors.append(CheckpointError)
    except ImportError:  # torch missing: load_model raises ImportError, caught below
        pass
    return (*errors, ImportError, RuntimeError)


def _run(args: argparse.Namespace) -> int:
    from ._atomic import check_output_dir
    from .align import AlignConfig
    from .pipeline import Pipeline

    check_output_dir(args.output, args.overwrite, [args.input])  # before any work
    cfg = AlignConfig(niter=args.niter, solver=args.solver)
    # constructing the Pipeline checks every option together (solver, flow, masks, devices,
    # backend, engine, size) before any weights, frames or network work
    pipe = Pipeline(weights=args.weights, backend=args.backend, device=args.device,
                    size=args.size, graph=args.graph, batch_size=args.batch_size, align=cfg,
                    flow=None if args.no_flow else args.flow, masks=args.masks,
                    flow_weights=args.flow_weights, engine=args.engine,
                    precision=args.precision,
                    mode="feedforward" if args.real_time else "offline", cli=True)  # fmt: skip
    pipe.check(num_frames=args.num_frames)
    show = not args.quiet

    def on_stage(name: str) -> None:
        if show:
            print(f"[monst3r-rt] {name} ...", file=sys.stderr, flush=True)

    recon = pipe.run(args.input, num_frames=args.num_frames, stride=args.stride, fps=args.fps,
                     progress=show, on_stage=on_stage)  # fmt: skip
    t = time.perf_counter()
    paths = recon.save(args.output, overwrite=args.overwrite)
    timings = {**recon.meta["timings"], "write": time.perf_counter() - t}
    h, w = recon.depths.shape[1:]
    rows = [
        ("frames", f"{len(recon)} at {w}x{h}"),
        ("pairs", str(recon.meta["pairs"])),
        ("backend", recon.meta["backend"]),
    ]
    rows += [(f"{k} s", f"{v:.2f}") for k, v in timings.items()]
    rows += [("total s", f"{sum(timings.values()):.2f}")]
    rows += [(k, v) for k, v in paths.items()]
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k.ljust(width)}  {v}" for k, v in rows))
    return 0


def _stream(args: argparse.Namespace) -> int:
    from ._atomic import check_output_dir
    from .stream import StreamConfig, stream_video

    check_output_dir(args.output, args.overwrite, [args.source])  # before any work
    cfg = StreamConfig(keep=args.keep, masks=args.masks, refine=args.refine)
    viewer = None
    if args.viewer or args.save:
        from .viewer import LiveViewer

        viewer = LiveViewer(save=args.save)
    source = int(args.source) if args.source.isdigit() else args.source
    video = stream_video(source, max_frames=args.max_frames, drop=False if args.no_drop else None,
                         weights=args.weights, backend=args.backend, engine=args.engine,
                         device=args.device, precision=args.precision, size=args.size,
                         config=cfg, output=args.output, overwrite=args.overwrite,
                         cli=True)  # fmt: skip
    stats = video.stream.stats
    show = not args.quiet and sys.stderr.isatty() or args.status
    try:
        for res in video:
            stats.add(res)
            if viewer is not None:
                viewer.log(res.index, video.stream.last_image, res)
            if show:
                print("\r" + stats.status(video.source.dropped), end="", file=sys.stderr,
                      flush=True)  # fmt: skip
    except KeyboardInterrupt:
        done = video.close()
        where = f"output finalised in {args.output}" if done else "nothing was written"
        print(f"\nmonst3r-rt stream: interrupted after {len(done) if done else 0} frames; "
              f"{where}", file=sys.stderr)  # fmt: skip
        return 130
    except Exception:  # a frame that cannot be read, a camera that stops: what ran is kept
        if video.reconstruction is not None:
            lead = "\n" if show else ""  # end the status line
            print(f"{lead}monst3r-rt stream: stopped after {len(video.reconstruction)} frames; "
                  f"output finalised in {args.output}", file=sys.stderr)  # fmt: skip
        raise
    finally:
        if viewer is not None:
            viewer.close()
    if show:
        print(file=sys.stderr)
    recon = video.reconstruction
    if recon is None:
        raise ValueError(f"no frame could be read from {args.source!r}")
    h, w = recon.depths.shape[1:]
    rows = [("frames", f"{len(recon)} at {w}x{h}"), ("keyframes", str(stats.keyframes)),
            ("backend", str(recon.meta.get("backend"))), ("FPS", f"{stats.fps():.2f}")]  # fmt: skip
    rows += stats.rows()
    if video.source.dropped:
        rows.append(("dropped", str(video.source.dropped)))
    rows.append(("output", args.output))
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k.ljust(width)}  {v}" for k, v in rows))
    return 0


def _view(args: argparse.Namespace) -> int:
    from .viewer import render_png, view

    if args.png:
        render_png(args.output, args.png, frame=args.frame)
        print(f"wrote {args.png}")
    if args.save or not args.png:
        view(args.output, save=args.save)
        if args.save:
            print(f"wrote {args.save} (open it with: rerun {args.save})")
    return 0


def _size(text: str) -> tuple[int, int]:
    """``WxH`` (as on the command line) → ``(H, W)``."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WxH, e.g. 512x288, got {text!r}") from None
    return h, w


def _export(args: argparse.Namespace) -> int:
    from ._atomic import check_output_dir
    from .deploy.export import export_onnx, format_table
    from .network import load_model
    from .pipeline import OFFICIAL_WEIGHTS
    from .runinfo import weights_fingerprint

    check_output_dir(args.output, args.overwrite)
    source = args.weights or OFFICIAL_WEIGHTS
    net = load_model(source)
    m = export_onnx(net, args.output, args.size, precision=args.precision, opset=args.opset,
                    weights=source, weights_hash=weights_fingerprint(source),
                    overwrite=args.overwrite)  # fmt: skip
    print(f"exported {m.width}x{m.height} {m.precision} (opset {m.opset}) to {args.output}")
    print(format_table(m.validation))
    return 0


def _build_engine(args: argparse.Namespace) -> int:
    from .deploy.tensorrt import build_engines

    paths = build_engines(args.folder, workspace_gib=args.workspace, max_batch=args.max_batch,
                          timing_cache=args.timing_cache, force=args.force)  # fmt: skip
    for graph, path in paths.items():
        print(f"{graph:<13} {path}")
    return 0


def _verify_engine(args: argparse.Namespace) -> int:
    from .deploy.export import compare_to_golden, format_table
    from .deploy.tensorrt import TensorRTBackend

    table = compare_to_golden(args.folder, TensorRTBackend(args.folder))
    print(f"{table['runtime']} vs {table['reference']}")
    print(format_table(table))
    return 0 if table["passed"] else 1


def add_network_options(p: argparse.ArgumentParser) -> None:
    """The options that choose and load the network, shared by ``run``, ``stream`` and
    ``eval``: ``--weights --backend --engine --precision --device --size``."""
    p.add_argument("--weights", help="checkpoint path or Hub id (default: official MonST3R)")
    p.add_argument("--backend", default="auto",
                   choices=["auto", "torch", "onnxruntime", "tensorrt"])  # fmt: skip
    p.add_argument("--engine", help="export folder (monst3r-rt export) for onnxruntime/tensorrt")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"],
                   help="torch backend precision")  # fmt: skip
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--size", type=int, default=512, choices=[224, 512])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="monst3r-rt", description="MonST3R 4D reconstruction from video, accelerated."
    )
    parser.add_argument("--version", action="version", version=f"monst3r-rt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    doctor = sub.add_parser("doctor", help="show what will run on this machine")
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    doctor.set_defaults(func=_doctor)

    run = sub.add_parser("run", help="reconstruct a video (4D: depth, poses, masks, points)")
    run.add_argument("input", help="video file, folder of images, or image file")
    run.add_argument("-o", "--output", required=True, help="output folder (must be new or empty)")
    add_network_options(run)
    run.add_argument("--num-frames", type=int, help="keep at most this many frames")
    run.add_argument("--stride", type=int, default=1, help="keep every k-th frame")
    run.add_argument("--fps", type=float, help="resample a video to this frame rate")
    run.add_argument("--graph", default="swinstride-5-noncyclic", help="pair graph")
    run.add_argument("--batch-size", type=int, default=16)
    run.add_argument("--niter", type=int, default=300, help="alignment iterations")
    run.add_argument("--solver", default="adam", choices=["adam", "lm"])
    run.add_argument("--flow", default="dis", choices=["dis", "raft"])
    run.add_argument("--flow-weights", help="RAFT state_dict for --flow raft")
    run.add_argument("--masks", choices=["official", "robust"],
                     help="dynamic masks from the flow (default: official)")  # fmt: skip
    run.add_argument("--no-flow", action="store_true", help="no flow term and no dynamic masks")
    run.add_argument("--real-time", action="store_true",
                     help="the official real-time mode (demo.py --real_time): oneref-mid pairs, "
                          "no flow, masks or alignment; adds PnP cameras and the official "
                          "per-pair files; needs the whole clip (not causal)")  # fmt: skip
    run.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    run.set_defaults(func=_run)

    st = sub.add_parser("stream", help="real-time streaming: frames in, poses/depth/masks out")
    st.add_argument("source", help="video file, folder of images, camera index (0) or URL")
    st.add_argument("-o", "--output", required=True, help="output folder (must be new or empty)")
    add_network_options(st)
    st.add_argument("--max-frames", type=int, help="stop after this many frames")
    st.add_argument("--no-drop", action="store_true",
                    help="live sources: queue frames instead of dropping those that arrive "
                         "while one is processed")  # fmt: skip
    st.add_argument(
        "--keep",
        default="none",
        choices=["all", "none"],
        help="per-pixel arrays kept in memory (none: flat memory; default)",
    )
    st.add_argument("--masks", default="flow", choices=["flow", "geometric", "none"])
    st.add_argument("--refine", default="thread", choices=["thread", "sync", "off"])
    st.add_argument("--viewer", action="store_true", help="log to a live rerun viewer")
    st.add_argument("--save", help="write a rerun recording (.rrd) while streaming (headless)")
    st.add_argument("--status", action="store_true", help="status line even when not a TTY")
    st.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    st.add_argument("-q", "--quiet", action="store_true", help="no status line")
    st.set_defaults(func=_stream)

    viewp = sub.add_parser("view", help="4D viewer of an output folder (rerun)")
    viewp.add_argument("output", help="output folder of 'monst3r-rt run'")
    viewp.add_argument("--save", help="write a rerun recording (.rrd) instead of opening a viewer")
    viewp.add_argument("--png", help="render a still image (no display, no extra dependency)")
    viewp.add_argument("--frame", type=int, help="frame whose moving points the still shows")
    viewp.set_defaults(func=_view)

    exp = sub.add_parser("export", help="export the network to ONNX (encoder + decoder graphs)")
    exp.add_argument("--weights", help="checkpoint path or Hub id (default: official MonST3R)")
    exp.add_argument("--size", type=_size, default=(288, 512), help="WxH, e.g. 512x288")
    exp.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    exp.add_argument("--opset", type=int, default=17)
    exp.add_argument("-o", "--output", required=True, help="engine folder, e.g. engines/512x288")
    exp.add_argument("--overwrite", action="store_true")
    exp.set_defaults(func=_export)

    build = sub.add_parser("build-engine", help="build TensorRT engines of an export (GPU)")
    build.add_argument("folder")
    build.add_argument("--workspace", type=float, default=2.0, help="GiB")
    build.add_argument("--max-batch", type=int, default=16)
    build.add_argument("--timing-cache", help="timing cache file (default: in the folder)")
    build.add_argument("--force", action="store_true", help="rebuild even if cached")
    build.set_defaults(func=_build_engine)

    verify = sub.add_parser("verify-engine", help="replay the export's golden outputs (GPU)")
    verify.add_argument("folder")
    verify.set_defaults(func=_verify_engine)

    from .bench.cli import add_parser as add_bench_parser  # monst3r-rt bench (issue 13)

    add_bench_parser(sub)
    from .eval.cli import add_parser as add_eval_parser  # monst3r-rt eval (issue 14)

    add_eval_parser(sub)
    from .batch.cli import add_parser as add_batch_parser  # monst3r-rt batch (issue 15)

    add_batch_parser(sub, run=run, stream=st)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except _user_errors() as exc:
        print(f"monst3r-rt {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"monst3r-rt {args.command}: interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
