"""The fused CPU alignment kernel (``_core.align_energy_grad``) alone: builds side by side.

    python benchmarks/align_kernel_bench.py [--cores old=/path/_core.so,new=/path/_core.so]
        [--frames 48] [--size 144x256] [--threads 1,2] [--flow off,on] [--reps 5] [--calls 3]
        [--dtype float32]

One synthetic scene (:func:`monst3r_rt.synthetic.make_scene`, as ``align_bench.py``), MST
initialisation, swinstride-5 graph; the kernel's arguments are written once to a temporary
folder and memory-mapped by one worker process per ``_core`` build (a build is loaded by path,
so two builds never share a process). The workers are driven in turns: for every repetition,
every (threads, flow) configuration runs ``--calls`` evaluations in each build, in alternating
order, so that the load of a shared machine falls on all builds alike. Reported: the median
seconds per evaluation of each build and configuration, its ratio to the first build, and the
largest difference of every output from the first build's (relative to the output's largest
magnitude).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from _machine import describe

_ARGS = (
    "edges pts_i pts_j w_i w_j log_depth rot trans focal pp edge_rot edge_trans edge_scale"
).split()
_FLOW = "flow_ij flow_ji static_mask flow_rot flow_trans".split()
_OUTS = "energy g_depth g_frame g_edge flow_stats g_depth_flow g_flow".split()


def _write_problem(args: argparse.Namespace, folder: str) -> None:
    """The kernel's arguments for the benchmark scene, one .npy per argument, in ``folder``."""
    from monst3r_rt.align import params as P
    from monst3r_rt.align.driver import prepare, prepare_flow
    from monst3r_rt.align.init import init_mst
    from monst3r_rt.align.objective import relative_poses
    from monst3r_rt.synthetic import make_scene

    h, w = (int(v) for v in args.size.split("x"))
    scene = make_scene(
        n_frames=args.frames, size=(h, w), n_objects=2, object_motion=0.05,
        depth_noise=0.02, pose_noise=0.01, seed=args.seed,
    )  # fmt: skip
    data = prepare(scene.edges, scene.pts_i, scene.pts_j, scene.conf_i, scene.conf_j)
    init = init_mst(scene.edges, scene.pts_i, scene.pts_j, scene.conf_i, scene.conf_j)
    dtype = np.dtype(args.dtype)
    params = {k: np.ascontiguousarray(v, dtype=dtype) for k, v in init.items()}
    data = data.astype(dtype)
    geo = P.geometry(params, data.n_frames)
    e = len(data.edges)
    flow = prepare_flow((scene.flow_ij, scene.flow_ji), scene.dynamic_masks, e, data.n_frames, h, w)
    flow = flow.astype(dtype)
    f_rot, f_trans = relative_poses(data.edges, geo.rot, geo.trans)
    arrays = dict(
        edges=data.edges, pts_i=data.pts_i, pts_j=data.pts_j, w_i=data.w_i, w_j=data.w_j,
        log_depth=geo.depth_log, rot=geo.rot, trans=geo.trans, focal=geo.focal, pp=data.pp,
        edge_rot=geo.edge_rot, edge_trans=geo.edge_trans, edge_scale=geo.edge_scale,
        flow_ij=flow.flow_ij, flow_ji=flow.flow_ji, static_mask=flow.static,
        flow_rot=f_rot, flow_trans=f_trans,
    )  # fmt: skip
    for name, a in arrays.items():
        a = np.ascontiguousarray(a, dtype=np.int64 if name == "edges" else dtype)
        np.save(os.path.join(folder, name + ".npy"), a)


def _worker(core_path: str, folder: str) -> None:
    """Serve timing requests (one JSON line each on stdin) with the build at ``core_path``."""
    spec = importlib.util.spec_from_file_location("_core", core_path)
    core = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(core)
    load = {n: np.load(os.path.join(folder, n + ".npy"), mmap_mode="r") for n in _ARGS + _FLOW}
    args = [load[n] for n in _ARGS]
    flow = {n: load[n] for n in _FLOW}
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        core.set_num_threads(req["threads"])
        kw = flow if req["flow"] else {}
        times = []
        for _ in range(req["calls"]):
            t0 = time.perf_counter()
            out = core.align_energy_grad(*args, **kw)
            times.append(time.perf_counter() - t0)
        if req.get("save"):
            parts = list(out[:4]) + ([np.asarray(out[4])] + list(out[5:]) if req["flow"] else [])
            np.savez(req["save"], **{n: np.asarray(a) for n, a in zip(_OUTS, parts, strict=False)})
        print(json.dumps({"times": times}), flush=True)


class _Build:
    def __init__(self, label: str, path: str, folder: str) -> None:
        self.label = label
        cmd = [sys.executable, __file__, "--worker", path, "--folder", folder]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert json.loads(self.proc.stdout.readline())["ready"]

    def run(self, **req) -> list[float]:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())["times"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def _max_diff(folder: str, labels: list[str], flow: bool) -> dict[str, float]:
    """Largest |output − first build's output| / max |first build's output|, per build."""
    ref = np.load(os.path.join(folder, f"out-{labels[0]}-{int(flow)}.npz"))
    res = {}
    for lab in labels[1:]:
        other = np.load(os.path.join(folder, f"out-{lab}-{int(flow)}.npz"))
        res[lab] = max(
            float(np.max(np.abs(other[k] - ref[k])) / max(np.max(np.abs(ref[k])), 1e-30))
            for k in ref.files
        )
    return res


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    default_core = next(
        os.path.join(here, "..", "python", "monst3r_rt", f)
        for f in os.listdir(os.path.join(here, "..", "python", "monst3r_rt"))
        if f.startswith("_core") and f.endswith(".so")
    )
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cores", default=f"this={default_core}", help="label=path,label=path")
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--size", default="144x256", help="HxW")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--flow", default="off,on")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        _worker(args.worker, args.folder)
        return
    cores = [c.split("=", 1) for c in args.cores.split(",")]
    configs = [(int(t), f == "on") for t in args.threads.split(",") for f in args.flow.split(",")]
    with tempfile.TemporaryDirectory(prefix="align_kernel_bench-") as folder:
        _write_problem(args, folder)
        builds = [_Build(label, path, folder) for label, path in cores]
        times = {(b.label, c): [] for b in builds for c in configs}
        try:
            for _, flow in {(0, f) for _, f in configs}:  # warm-up, outputs for the comparison
                for b in builds:
                    b.run(threads=2, flow=flow, calls=1,
                          save=os.path.join(folder, f"out-{b.label}-{int(flow)}.npz"))  # fmt: skip
            diffs = {f: _max_diff(folder, [b.label for b in builds], f) for _, f in configs}
            for rep in range(args.reps):
                for c in configs:
                    order = builds if rep % 2 == 0 else builds[::-1]
                    for b in order:
                        times[(b.label, c)] += b.run(threads=c[0], flow=c[1], calls=args.calls)
        finally:
            for b in builds:
                b.close()
    print(
        f"align_energy_grad, {args.frames} frames {args.size} swinstride-5, {args.dtype}; "
        f"median of {args.reps}x{args.calls} evaluations per cell; machine: {describe()}"
    )
    first = builds[0].label
    print(f"{'threads':>7}{'flow':>6}" + "".join(f"{b.label + ' ms':>12}" for b in builds)
          + "".join(f"{b.label + '/' + first:>14}" for b in builds[1:]))  # fmt: skip
    for c in configs:
        med = {b.label: float(np.median(times[(b.label, c)])) for b in builds}
        row = f"{c[0]:>7}{'on' if c[1] else 'off':>6}"
        row += "".join(f"{med[b.label] * 1e3:>12.1f}" for b in builds)
        row += "".join(f"{med[first] / med[b.label]:>13.2f}x" for b in builds[1:])
        print(row)
    for f, d in sorted(diffs.items()):
        for lab, v in d.items():
            print(f"flow {'on' if f else 'off'}: max |{lab} - {first}| / max|{first}| = {v:.2e}")


if __name__ == "__main__":
    main()
