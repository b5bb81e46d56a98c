"""Backends side by side: pairs per second and per-pair latency (p50 / p95) of every available
backend × precision on the same inputs, encode-once and per-pair, in one table naming the machine.

    python benchmarks/network_bench.py [--size 512x288] [--pairs 6] [--tiny] [--backends ...]

Full-size architecture with random weights (the released weights cannot be downloaded here; the
cost does not depend on their values), exported once to ONNX (fp32) in a temporary folder.
Per-pair latency: one pair through encoder (both images) + decoder, batch 1. Encode-once
throughput: ``--pairs`` pairs of a swin-3 graph, each frame encoded once, decoded in batches
of 4. Backends: torch (CPU, fp32 and bf16; CUDA fp32/fp16/bf16 when a GPU is visible),
onnxruntime (CPU; CUDA when its provider is present), TensorRT (when installed, with a GPU).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
from _machine import describe
from _table import print_table


def _measure(backend, images: np.ndarray, pairs: list[tuple[int, int]], repeats: int) -> dict:
    """Per-pair latency through the timing core of ``monst3r-rt bench`` (same warm-up, clocks
    and percentiles), then one encode-once pass over ``pairs``."""
    from monst3r_rt.bench.harness import measure, percentiles
    from monst3r_rt.inference import infer_pairs

    h, w = images.shape[2:]
    one, two = np.array([0]), np.array([1])

    def pair(r: int) -> None:
        a, b = r % len(images), (r + 1) % len(images)
        tok = backend.encode(images[[a, b]])
        backend.decode(backend.take(tok, one), backend.take(tok, two), (h, w))

    m = measure(pair, warmup=1, repeat=repeats, device=str(getattr(backend, "device", "cpu")))
    t = time.perf_counter()
    infer_pairs(backend, images, pairs, batch_size=4, progress=False)
    enc_once = time.perf_counter() - t
    p50, p95 = (v / 1e3 for v in percentiles(m.samples_s, (50, 95)))
    return {"p50": p50, "p95": p95, "per_pair_pps": 1.0 / m.mean_s,
            "once_pps": len(pairs) / enc_once}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="512x288", help="WxH")
    parser.add_argument("--pairs", type=int, default=6, help="pairs in the encode-once run")
    parser.add_argument("--repeats", type=int, default=3, help="per-pair latency samples")
    parser.add_argument("--tiny", action="store_true", help="a tiny network (smoke run)")
    parser.add_argument("--backends", default="torch-fp32,torch-bf16,onnxruntime-fp32,tensorrt")
    args = parser.parse_args()

    import torch

    from monst3r_rt import make_pairs
    from monst3r_rt.deploy.backends import OnnxRuntimeBackend, TorchBackend
    from monst3r_rt.deploy.export import export_onnx
    from monst3r_rt.deploy.tensorrt import tensorrt_available
    from monst3r_rt.network import MONST3R_KWARGS, PointmapNet

    w, h = (int(v) for v in args.size.lower().split("x"))
    torch.manual_seed(0)
    if args.tiny:
        kw = dict(MONST3R_KWARGS, enc_embed_dim=64, enc_depth=2, enc_num_heads=2,
                  dec_embed_dim=64, dec_depth=10, dec_num_heads=2)  # fmt: skip
    else:
        kw = MONST3R_KWARGS
    net = PointmapNet(**kw).eval()
    n_frames = 2
    while len(make_pairs(n_frames, "swin-3-noncyclic")) < args.pairs:
        n_frames += 1
    pairs = make_pairs(n_frames, "swin-3-noncyclic")[: args.pairs]
    images = torch.zeros(n_frames, 3, h, w).uniform_(-1, 1).numpy()
    wanted = args.backends.split(",")
    rows = []
    cuda = torch.cuda.is_available()
    with tempfile.TemporaryDirectory() as tmp:
        engine = os.path.join(tmp, "engine")
        if any(b.startswith(("onnxruntime", "tensorrt")) for b in wanted):
            t = time.perf_counter()
            export_onnx(net, engine, (h, w), validate=False)
            print(f"export: {time.perf_counter() - t:.1f} s")
        for spec in wanted:
            kind, _, precision = spec.partition("-")
            if kind == "torch":
                devices = ["cpu"] + (["cuda"] if cuda else [])
                for dev in devices:
                    if dev == "cpu" and precision == "fp16":
                        continue  # no fast fp16 kernels on CPU
                    copy = PointmapNet(**kw).eval()
                    copy.load_state_dict(net.state_dict())
                    backend = TorchBackend(copy, device=dev, precision=precision or "fp32")
                    rows.append((backend.name, _measure(backend, images, pairs, args.repeats)))
            elif kind == "onnxruntime":
                backend = OnnxRuntimeBackend(engine)
                rows.append((backend.name, _measure(backend, images, pairs, args.repeats)))
            elif kind == "tensorrt":
                ok, why = tensorrt_available()
                if not ok:
                    print(f"tensorrt: skipped ({why})")
                    continue
                from monst3r_rt.deploy.tensorrt import TensorRTBackend

                backend = TensorRTBackend(engine)
                rows.append((backend.name, _measure(backend, images, pairs, args.repeats)))
    base = rows[0][1]["once_pps"] if rows else 1.0
    print_table(
        f"Network backends, {w}x{h}, {'tiny' if args.tiny else 'full-size'} architecture "
        f"({describe()}, torch {torch.__version__}, {torch.get_num_threads()} threads)",
        ["backend", "per-pair p50 s", "per-pair p95 s", "per-pair pairs/s",
         f"encode-once pairs/s ({len(pairs)} pairs)", f"vs {rows[0][0] if rows else '-'}"],
        [[name, f"{m['p50']:.3f}", f"{m['p95']:.3f}", f"{m['per_pair_pps']:.3f}",
          f"{m['once_pps']:.3f}", f"{m['once_pps'] / base:.2f}x"] for name, m in rows],
    )  # fmt: skip


if __name__ == "__main__":
    main()
