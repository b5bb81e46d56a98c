"""Global alignment: PyTorch-autograd reference vs the fused kernels, side by side in one run.

    python benchmarks/align_bench.py [--frames 48] [--size 144x256] [--niter 300]
                                     [--solvers reference,adam,lm] [--flow off,on] [--device cpu]

A synthetic dynamic scene with ground truth (moving camera, independently moving objects,
per-edge random scale, spatially correlated depth noise, small per-edge pose errors,
swinstride-5 graph; :func:`monst3r_rt.synthetic.make_scene`). Every solver starts from the same
MST initialisation and minimises the same objective: alignment + camera smoothness, plus, with
``--flow on``, the official optical-flow term (the scene's exact flows, static pixels from its
dynamic masks; the reference and Adam switch it on at 10 % of the iterations as the official
optimiser does, LM after its flow-free phase). Adam and LM run through the same code as
``global_align`` (``driver.optimize``). Each (solver, flow) runs in its own process so that its
peak RSS is its own; the peak is reset after the scene is generated (images and, with the flow
term off, flows are freed), so "peak MB" is the process's resident memory at its highest during
initialisation + optimisation, the pairwise inputs (and flows) included. Columns: wall time of
the optimisation, speed-up against the reference with the same flow setting, peak RSS and its
ratio to the pairwise inputs, final energy (evaluated by the same float64 code for all, flow term
included when on), ATE (RMSE of camera centres after Sim(3) alignment, in units of the scene's
ground-truth trajectory), depth Abs Rel after median scaling.

For scale: the official optimiser (PyTorch autograd, batchified) took about 75 s for 24 frames at
96×128 and about 710 s for 48 frames at 144×256 on this project's 2-core machine (flow off).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
from _machine import describe


def _scene(args: argparse.Namespace):
    from monst3r_rt.synthetic import make_scene

    h, w = (int(v) for v in args.size.split("x"))
    return make_scene(
        n_frames=args.frames, size=(h, w), n_objects=2, object_motion=0.05,
        depth_noise=0.02, pose_noise=0.01, seed=args.seed,
    )  # fmt: skip


def _metrics(scene, params: dict, data, flow) -> dict:
    from monst3r_rt.align import params as P
    from monst3r_rt.align.objective import evaluate
    from monst3r_rt.geometry import weighted_procrustes

    p64 = {k: v.astype(np.float64) for k, v in params.items()}
    if flow is not None:
        arrays = (flow.flow_ij, flow.flow_ji, flow.static)
        flow = type(flow)(*(a.astype(np.float64) for a in arrays))
    energy, _, _ = evaluate(data.astype(np.float64), p64, flow=flow)
    geo = P.geometry(p64, data.n_frames)
    gt_c = scene.poses[:, :3, 3]
    s, r, t = weighted_procrustes(geo.trans, gt_c, np.ones(len(gt_c)), with_scale=True)
    aligned = s * geo.trans @ r.T + t
    extent = np.linalg.norm(gt_c - gt_c.mean(0), axis=1).mean()
    ate = float(np.sqrt(np.mean(np.sum((aligned - gt_c) ** 2, axis=1))) / max(extent, 1e-12))
    depth = np.exp(p64["log_depth"])
    gt = scene.depths.astype(np.float64)
    depth = depth * np.median(gt) / np.median(depth)
    absrel = float(np.mean(np.abs(depth - gt) / gt))
    return {"energy": float(energy), "ate": ate, "absrel": absrel}


def _status_mb(field: str) -> float:
    """A field of /proc/self/status in MB (Linux), or NaN."""
    try:
        with open("/proc/self/status") as f:
            line = next(x for x in f if x.startswith(field + ":"))
        return int(line.split()[1]) / 1024
    except (OSError, StopIteration):
        return float("nan")


def _reset_peak() -> None:
    """Reset the peak RSS (VmHWM) so that it measures the alignment alone (Linux ≥ 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        _reset_peak.ok = True
    except OSError:
        _reset_peak.ok = False


_reset_peak.ok = False  # type: ignore[attr-defined]


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(args: argparse.Namespace) -> dict:
    import gc

    import monst3r_rt  # noqa: F401
    from monst3r_rt.align import AlignConfig
    from monst3r_rt.align.driver import optimize, prepare, prepare_flow
    from monst3r_rt.align.init import init_mst

    scene = _scene(args)
    with_flow = args.flow == "on"
    scene.images = None
    if not with_flow:
        scene.flow_ij = scene.flow_ji = None
    gc.collect()
    rss_before = _status_mb("VmRSS")
    _reset_peak()
    data = prepare(scene.edges, scene.pts_i, scene.pts_j, scene.conf_i, scene.conf_j)
    n, (h, w), e = data.n_frames, data.shape, len(data.edges)
    flow = None
    if with_flow:
        flow = prepare_flow((scene.flow_ij, scene.flow_ji), scene.dynamic_masks, e, n, h, w)
    init = init_mst(scene.edges, scene.pts_i, scene.pts_j, scene.conf_i, scene.conf_j)
    init = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in init.items()}
    solver = args.child
    t0 = time.perf_counter()
    if solver == "reference":
        import torch

        from monst3r_rt.align.reference import reference_adam

        torch.set_num_threads(os.cpu_count() or 1)
        flow_kw = {}
        if with_flow:
            flow_kw = dict(flows=(flow.flow_ij, flow.flow_ji), static_masks=flow.static > 0.5)
        final, _ = reference_adam(
            init, scene.edges, scene.pts_i, scene.pts_j, scene.conf_i, scene.conf_j,
            niter=args.niter, device=args.device, **flow_kw,
        )  # fmt: skip
        iters = args.niter
    elif solver in ("adam", "lm"):
        cfg = AlignConfig(niter=args.niter, solver=solver)
        final, hist = optimize(data, flow, cfg, args.device, init)
        iters = len(hist) - (1 if solver == "lm" else 0)  # LM's hist[0] is the initial energy
    else:
        raise SystemExit(f"unknown solver {solver}")
    seconds = time.perf_counter() - t0
    out = {"solver": solver, "flow": args.flow, "seconds": seconds, "iterations": iters}
    out["peak_mb"] = _status_mb("VmHWM") if _reset_peak.ok else _maxrss_mb()
    out["before_mb"] = rss_before
    out.update(_metrics(scene, final, data, flow))
    arrays = [scene.pts_i, scene.pts_j, scene.conf_i, scene.conf_j]
    out["input_mb"] = sum(a.nbytes for a in arrays) / 2**20
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--size", default="144x256", help="HxW")
    ap.add_argument("--niter", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--solvers", default="reference,adam,lm")
    ap.add_argument("--flow", default="off,on", help="flow term: off, on or off,on")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(args)))
        return
    rows = []
    for flow in args.flow.split(","):
        for solver in args.solvers.split(","):
            cmd = [sys.executable, __file__, "--child", solver, "--frames", str(args.frames)]
            cmd += ["--size", args.size, "--niter", str(args.niter), "--seed", str(args.seed)]
            cmd += ["--device", args.device, "--flow", flow]
            res = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if res.returncode != 0:
                print(f"{solver} flow {flow}: failed\n{res.stderr[-2000:]}", file=sys.stderr)
                continue
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    if not rows:
        raise SystemExit("no solver ran")
    e_frames = 10 * args.frames - 50
    print(
        f"global alignment, {args.frames} frames {args.size}, swinstride-5 (E={e_frames}), "
        f"device {args.device}; machine: {describe()}"
    )
    print(
        f"pairwise inputs: {rows[0]['input_mb']:.0f} MB (process before alignment: "
        f"{rows[0]['before_mb']:.0f} MB)"
    )
    hdr = f"{'solver':<11}{'flow':>5}{'iters':>6}{'time s':>9}{'speed-up':>9}{'peak MB':>9}"
    print(hdr + f"{'x input':>8}{'energy':>12}{'ATE':>9}{'AbsRel':>8}")
    for r in rows:
        base = next(
            (b["seconds"] for b in rows if b["solver"] == "reference" and b["flow"] == r["flow"]),
            None,
        )
        speed = f"{base / r['seconds']:.1f}x" if base else "-"
        print(
            f"{r['solver']:<11}{r['flow']:>5}{r['iterations']:>6}{r['seconds']:>9.2f}{speed:>9}"
            f"{r['peak_mb']:>9.0f}{r['peak_mb'] / r['input_mb']:>8.2f}{r['energy']:>12.6f}"
            f"{r['ate']:>9.4f}{r['absrel']:>8.4f}"
        )


if __name__ == "__main__":
    main()
