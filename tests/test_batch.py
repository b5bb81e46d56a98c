"""monst3r-rt batch / run_many: inputs, fingerprints, resume, faults, Ray (issue 15).

CPU only: a tiny random-weight checkpoint and generated 4-frame clips (one of them corrupt)."""

from __future__ import annotations

import glob
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from monst3r_rt.batch import (
    REPORT_FILE,
    BatchError,
    config_fingerprint,
    expand_inputs,
    run_many,
    stored_fingerprint,
)
from monst3r_rt.batch.worker import Worker, normalize_options, wait_gone

CLIPS = ("clip0", "clip1", "clip2")


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """(folder with clip0..2.avi and a corrupt bad.avi, checkpoint path, run options)."""
    torch = pytest.importorskip("torch")
    from tiny_models import TINY_LINEAR

    from monst3r_rt.align import AlignConfig
    from monst3r_rt.network import PointmapNet, save_checkpoint
    from monst3r_rt.synthetic import make_scene, scene_video

    d = tmp_path_factory.mktemp("batch")
    torch.manual_seed(0)
    ckpt = save_checkpoint(PointmapNet(**TINY_LINEAR), d / "tiny.pth")
    (d / "videos").mkdir()
    for i, name in enumerate(CLIPS):
        sc = make_scene(n_frames=4, size=(64, 112), n_objects=1, object_motion=0.1, seed=i)
        scene_video(sc, d / "videos" / f"{name}.avi")
    (d / "videos" / "bad.avi").write_bytes(b"not a video" * 50)
    opts = dict(weights=str(ckpt), device="cpu", size=224, batch_size=8,
                align=AlignConfig(niter=5))  # fmt: skip
    return d, ckpt, opts


def _lines(root) -> list[dict]:
    with open(os.path.join(root, REPORT_FILE)) as f:
        return [json.loads(line) for line in f]


def _partials(root) -> list[str]:
    return glob.glob(os.path.join(root, ".*.partial-*"))


def _arrays(folder) -> dict[str, np.ndarray]:
    with np.load(os.path.join(folder, "reconstruction.npz")) as z:
        return {k: z[k] for k in z.files}


def _files(folder) -> list[str]:
    return sorted(os.path.relpath(os.path.join(r, f), folder)
                  for r, _, fs in os.walk(folder) for f in fs)  # fmt: skip


# ---- inputs and fingerprints (no network) ------------------------------------------------------
def test_expand_inputs_globs_manifests_and_unique_stable_names(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for p in ("a/x.mp4", "b/x.mp4", "a/y.avi"):
        (tmp_path / p).write_bytes(b"")
    (tmp_path / "frames").mkdir()
    (tmp_path / "list.txt").write_text("# comment\n\na/y.avi\nframes\n")
    items = expand_inputs([str(tmp_path / "*/x.mp4"), tmp_path / "list.txt",
                           str(tmp_path / "a" / "y.avi")])  # fmt: skip
    paths = [i.path for i in items]
    assert paths == [str(tmp_path / "a/x.mp4"), str(tmp_path / "b/x.mp4"),
                     str(tmp_path / "a/y.avi"), str(tmp_path / "frames")]  # fmt: skip
    names = [i.name for i in items]
    assert names[2:] == ["y", "frames"]
    assert names[0] != names[1] and all(n.startswith("x-") and len(n) == 10 for n in names[:2])
    assert len(set(names)) == len(names)
    assert expand_inputs([str(tmp_path / "*/x.mp4")]) == items[:2]  # stable across calls
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        expand_inputs([tmp_path / "a" / "x.mp4", tmp_path / "nope.mp4"])
    (tmp_path / "bad.txt").write_text("a/x.mp4\nmissing.avi\n")
    with pytest.raises(FileNotFoundError, match=r"bad.txt:2.*missing.avi"):
        expand_inputs([tmp_path / "bad.txt"])
    with pytest.raises(FileNotFoundError, match="matches nothing"):
        expand_inputs([str(tmp_path / "*.mkv")])


def test_fingerprint_covers_output_options_only():
    from monst3r_rt.align import AlignConfig

    def fp(**kw):
        return config_fingerprint("offline", normalize_options("offline", kw), "sha256:w")

    base = fp(size=224)
    assert fp(size=224, stride=1, align=AlignConfig()) == base  # defaults given explicitly
    assert fp(size=224, batch_size=3, device="cpu") == base  # speed / placement only
    assert fp(size=224, align=AlignConfig(niter=7)) != base
    assert fp(size=224, stride=2) != base
    opts = normalize_options("offline", {"size": 224})
    assert config_fingerprint("offline", opts, "sha256:v") != base  # other weights
    assert config_fingerprint("stream", normalize_options("stream", {"size": 224}),
                              "sha256:w") != base  # fmt: skip
    with pytest.raises(BatchError, match="graph"):
        normalize_options("stream", {"graph": "complete"})


# ---- in-process -------------------------------------------------------------------------------
def test_in_process_faults_resume_and_changed_config(clips, tmp_path):
    from monst3r_rt import Pipeline

    d, _, opts = clips
    root = tmp_path / "out"
    rep = run_many([str(d / "videos" / "*.avi")], root, **opts)
    assert sorted(r.name for r in rep.done) == list(CLIPS)
    assert [r.name for r in rep.failed] == ["bad"] and "bad.avi" in rep.failed[0].error
    lines = {x["name"]: x for x in _lines(root)}
    assert lines["bad"]["status"] == "failed" and lines["bad"]["input"].endswith("bad.avi")
    assert lines["bad"]["error"] and lines["bad"]["seconds"] >= 0
    assert sorted(os.listdir(root)) == sorted([*CLIPS, REPORT_FILE])  # nothing partial
    assert rep.frames == 12 and rep.workers["local"]["loads"] == 1
    for name in CLIPS:
        assert stored_fingerprint(root / name) == rep.fingerprint

    # exactly what `monst3r-rt run` writes (same files, same arrays)
    ref = tmp_path / "ref"
    pipe = Pipeline(**{k: v for k, v in opts.items()})
    pipe.run(str(d / "videos" / "clip1.avi"), progress=False).save(ref)
    assert _files(ref) == _files(root / "clip1")
    for k, v in _arrays(ref).items():
        got = _arrays(root / "clip1")[k]
        if v.dtype.kind == "f":
            np.testing.assert_allclose(got, v, rtol=1e-5, atol=1e-6 * np.nanmax(np.abs(v)))
        else:
            np.testing.assert_array_equal(got, v)

    # a re-run skips the finished ones (the corrupt one is tried again)
    mtimes = {n: os.path.getmtime(root / n / "run.json") for n in CLIPS}
    rep2 = run_many([str(d / "videos" / "*.avi")], root, **opts)
    assert sorted(r.name for r in rep2.skipped) == list(CLIPS)
    assert [r.name for r in rep2.failed] == ["bad"] and not rep2.done
    assert {n: os.path.getmtime(root / n / "run.json") for n in CLIPS} == mtimes
    assert len(_lines(root)) == 4  # the jsonl holds the latest batch

    # a changed option re-runs them
    from monst3r_rt.align import AlignConfig

    rep3 = run_many([str(d / "videos" / f"{n}.avi") for n in CLIPS], root,
                    **{**opts, "align": AlignConfig(niter=6)})  # fmt: skip
    assert sorted(r.name for r in rep3.done) == list(CLIPS) and rep3.fingerprint != rep.fingerprint
    with open(root / "clip0" / "run.json") as f:
        meta = json.load(f)
    assert meta["config"]["align"]["niter"] == 6
    assert meta["batch"]["fingerprint"] == rep3.fingerprint
    assert not _partials(root)


class FlakyGpuFlow:
    """A flow callable whose first call fails as a lost GPU does; then zero flow."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return np.zeros((len(src), 2, *src.shape[1:3]), np.float32)


def test_in_process_device_fault_replaces_the_worker_and_retries(clips, tmp_path):
    d, _, opts = clips
    videos = [d / "videos" / "clip0.avi", d / "videos" / "clip1.avi"]
    rep = run_many(videos, tmp_path / "a", max_retries=1, **{**opts, "flow": FlakyGpuFlow()})
    assert [(r.name, r.status, r.attempts) for r in rep.results] == [
        ("clip0", "done", 2), ("clip1", "done", 1)]  # fmt: skip
    assert rep.workers["local"]["died"] and rep.workers["local-2"]["loads"] == 1
    assert rep.results[0].worker == "local-2" and not _partials(tmp_path / "a")
    rep = run_many(videos[:1], tmp_path / "b", max_retries=0, **{**opts, "flow": FlakyGpuFlow()})
    assert rep.failed[0].error.startswith("worker died: WorkerLostError")
    assert os.listdir(tmp_path / "b") == [REPORT_FILE]


def test_in_process_interrupt_keeps_finished_folders(clips, tmp_path):
    d, _, opts = clips

    def ctrl_c(result) -> None:
        raise KeyboardInterrupt

    videos = [d / "videos" / f"{n}.avi" for n in CLIPS]
    rep = run_many(videos, tmp_path, on_result=ctrl_c, **opts)
    assert rep.interrupted and [r.name for r in rep.done] == ["clip0"]
    assert sorted(os.listdir(tmp_path)) == sorted(["clip0", REPORT_FILE])
    assert stored_fingerprint(tmp_path / "clip0") == rep.fingerprint


def test_preflight_errors_before_any_work(clips, tmp_path):
    d, _, opts = clips
    root = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match="missing.avi"):
        run_many([d / "videos" / "clip0.avi", d / "videos" / "missing.avi"], root, **opts)
    assert not root.exists()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(BatchError, match="not a writable folder"):
        run_many([d / "videos" / "clip0.avi"], blocker / "out", **opts)
    with pytest.raises(ValueError, match="size"):
        run_many([d / "videos" / "clip0.avi"], root, **{**opts, "size": 100})
    assert not root.exists()
    (root / "clip0").mkdir(parents=True)  # someone else's folder
    (root / "clip0" / "mine.txt").write_text("keep")
    with pytest.raises(BatchError, match="not written by a batch"):
        run_many([d / "videos" / "clip0.avi"], root, **opts)
    assert os.listdir(root / "clip0") == ["mine.txt"]


def test_an_output_folder_holding_an_input_is_refused_even_with_overwrite(clips, tmp_path):
    """OUT_ROOT/<name> that is an input folder (or holds an input) would be replaced by the
    output: refused before any work, --overwrite or not, and the input is untouched."""
    d, _, opts = clips
    frames = tmp_path / "frames"
    frames.mkdir()
    (frames / "000.png").write_bytes(b"x")
    for overwrite in (False, True):
        with pytest.raises(BatchError, match="choose another OUT_ROOT"):
            run_many([frames, d / "videos" / "clip0.avi"], tmp_path, overwrite=overwrite, **opts)
    assert os.listdir(frames) == ["000.png"] and not (tmp_path / "clip0").exists()
    nested = tmp_path / "clip1"  # an input inside another input's output folder
    nested.mkdir()
    video = nested / "clip1.avi"
    video.write_bytes((d / "videos" / "clip1.avi").read_bytes())
    with pytest.raises(BatchError, match="clip1.avi in "):
        run_many([video], tmp_path, overwrite=True, **opts)
    assert video.is_file()


def test_cli_batch_refuses_options_of_the_other_mode_and_ray_options_in_process(
    clips, tmp_path, capsys
):
    from monst3r_rt.cli import main

    d, ckpt, _ = clips
    root = tmp_path / "out"
    argv = ["batch", str(d / "videos" / "clip0.avi"), "-o", str(root), "--weights", str(ckpt),
            "--size", "224", "-q"]  # fmt: skip
    for extra, flag in [
        (["--max-frames", "3"], "--max-frames: only for --mode stream"),
        (["--keep", "all", "--refine", "off"], "--keep, --refine: only for --mode stream"),
        (["--stream-masks", "none"], "--stream-masks: only for --mode stream"),
        (["--workers", "2"], "--workers: only with --ray"),
        (["--mode", "stream", "--gpus-per-worker", "0"], "--gpus-per-worker: only with --ray"),
    ]:
        assert main([*argv, *extra]) == 2
        assert flag in capsys.readouterr().err
    assert not root.exists()


def test_cli_batch_stream_mode(clips, tmp_path, capsys):
    from monst3r_rt.cli import main

    d, ckpt, _ = clips
    root = tmp_path / "out"
    (tmp_path / "list.txt").write_text(
        f"{d / 'videos' / 'clip0.avi'}\n{d / 'videos' / 'bad.avi'}\n"
    )
    argv = ["batch", str(tmp_path / "list.txt"), "-o", str(root), "--mode", "stream",
            "--weights", str(ckpt), "--device", "cpu", "--size", "224", "-q"]  # fmt: skip
    assert main(argv) == 1  # one failure
    out = capsys.readouterr().out
    assert "done" in out and "failed bad" in out
    with open(root / "clip0" / "run.json") as f:
        meta = json.load(f)
    assert meta["mode"] == "stream" and meta["frames"] == 4
    assert meta["batch"]["mode"] == "stream"
    assert main([*argv, "--graph", "complete"]) == 2
    assert "--graph: only for --mode offline" in capsys.readouterr().err


# ---- Ray --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_matches_in_process(clips, tmp_path, local_ray):
    d, _, opts = clips
    inputs = [str(d / "videos" / "*.avi")]
    rep = run_many(inputs, tmp_path / "ray", ray_address="auto", workers=2, **opts)
    # The in-process reference runs in a Ray worker process too, with the actors' environment
    # and threads (Ray sets OMP_NUM_THREADS=num_cpus when unset, 1 here; this process has the
    # machine's count). Torch's CPU kernels round differently with other thread settings on some
    # CPUs (AVX2), and the masks' PnP-RANSAC on random-weight pointmaps turns a last-bit
    # difference into other masks and poses (measured with AVX2 kernels, one thread against two:
    # 470 mask pixels, poses 4 % of their scale apart), so no tolerance would do; in the same
    # environment the folders are identical.
    in_a_worker = local_ray.remote(num_cpus=1)(run_many)
    local = local_ray.get(in_a_worker.remote([d / "videos" / "clip2.avi"], tmp_path / "local",
                                             **opts))  # fmt: skip
    assert sorted(r.name for r in rep.done) == list(CLIPS)
    assert [r.name for r in rep.failed] == ["bad"] and rep.failed[0].attempts == 1
    assert len(rep.workers) == 2 and all(w["loads"] == 1 for w in rep.workers.values())
    assert sum(w["videos"] for w in rep.workers.values()) == 4
    assert rep.fingerprint == local.fingerprint
    assert not _partials(tmp_path / "ray")
    a, b = tmp_path / "ray" / "clip2", tmp_path / "local" / "clip2"
    assert _files(a) == _files(b)
    ref = _arrays(b)
    for k, v in _arrays(a).items():
        np.testing.assert_array_equal(v, ref[k], err_msg=k)
    # a re-run through Ray skips them without starting a worker for them
    rep2 = run_many(inputs[:1], tmp_path / "ray", ray_address="auto", **opts)
    assert sorted(r.name for r in rep2.skipped) == list(CLIPS)


class FlowThatHangsOnce:
    """A flow callable (zero flow) whose first call, in whichever worker process, writes
    ``{"pid": ...}`` to ``announce`` and then hangs until that process is killed: the test
    kills a worker that is surely mid-video, however fast the machine finishes a video."""

    def __init__(self, announce: str, hang_s: float = 300.0) -> None:
        self.announce, self.hang_s = announce, hang_s

    def __call__(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        try:  # one call in all processes wins
            os.close(os.open(self.announce + ".claim", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return np.zeros((len(src), 2, *src.shape[1:3]), np.float32)
        tmp = f"{self.announce}.{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump({"pid": os.getpid()}, f)
        os.replace(tmp, self.announce)  # the test reads all of it or nothing
        time.sleep(self.hang_s)
        raise RuntimeError(f"worker {os.getpid()} was not killed within {self.hang_s} s")


def test_ray_actor_killed_mid_video_is_retried(clips, tmp_path, local_ray):
    ray = local_ray
    d, _, opts = clips
    root = tmp_path / "out"
    announce = str(tmp_path / "hanging.json")
    killed: dict[str, str] = {}
    stop = threading.Event()

    def kill_the_hanging_worker() -> None:  # the actor whose video hangs in its flow
        while not os.path.exists(announce):
            if stop.wait(0.005):
                return
        with open(announce) as f:
            pid = json.load(f)["pid"]
        for owner in glob.glob(os.path.join(root, ".clip*.partial-*", "owner.json")):
            try:  # the other worker's may be half-written or gone; the hanging one's is whole
                with open(owner) as f:
                    info = json.load(f)
            except (OSError, ValueError):
                continue
            if info["pid"] == pid:
                killed["video"] = os.path.basename(os.path.dirname(owner)).split(".")[1]
                killed["worker"] = info["worker"]
                ray.kill(ray.get_actor(info["worker"]))
                return
        os.kill(pid, signal.SIGKILL)  # no owner found (the asserts say so): do not hang

    # the actors unpickle the flow: send this module's class by value (tests/ is not on their path)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    watcher = threading.Thread(target=kill_the_hanging_worker, daemon=True)
    watcher.start()
    hanging = {**opts, "flow": FlowThatHangsOnce(announce)}
    try:
        rep = run_many([d / "videos" / f"{n}.avi" for n in CLIPS], root, ray_address="auto",
                       workers=2, max_retries=1, **hanging)  # fmt: skip
    finally:
        stop.set()
        watcher.join()
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert killed, "no video was seen under way"
    assert sorted(r.name for r in rep.done) == list(CLIPS) and not rep.failed
    retried = next(r for r in rep.done if r.name == killed["video"])
    assert retried.attempts == 2 and retried.worker != killed["worker"]
    assert rep.workers[killed["worker"]] == {"died": True}
    assert not _partials(root)
    assert sorted(os.listdir(root)) == sorted([*CLIPS, REPORT_FILE])
    from monst3r_rt import Reconstruction

    assert len(Reconstruction.load(root / killed["video"])) == 4


def test_ray_interrupt_keeps_finished_folders_and_nothing_partial(clips, tmp_path, local_ray):
    d, _, opts = clips
    root = tmp_path / "out"

    def ctrl_c(result) -> None:  # Ctrl-C as the first video finishes, the other under way
        raise KeyboardInterrupt

    rep = run_many([d / "videos" / f"{n}.avi" for n in CLIPS], root, ray_address="auto",
                   workers=2, on_result=ctrl_c, **opts)  # fmt: skip
    assert rep.interrupted and len(rep.done) == 1
    table = rep.table()  # counts the inputs, not only what finished
    assert re.search(rf"^videos +{len(CLIPS)}$", table, re.M), table
    assert re.search(rf"^not run +{len(CLIPS) - 1}$", table, re.M), table
    assert not _partials(root)
    finished = [n for n in os.listdir(root) if n != REPORT_FILE]
    assert finished and set(finished) <= set(CLIPS)
    for name in finished:  # complete, and a re-run will skip it
        assert stored_fingerprint(root / name) == rep.fingerprint


def test_wait_gone_waits_for_a_killed_process_and_treats_a_zombie_as_gone():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    here = {"host": socket.gethostname(), "pid": child.pid}
    try:
        t = time.monotonic()
        assert not wait_gone(here, timeout=0.2)  # alive: waits the whole timeout, then False
        assert time.monotonic() - t >= 0.2
        child.kill()
        # until it has exited, without reaping it: a zombie, which can no longer write anything
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
        with open(f"/proc/{child.pid}/stat") as f:
            assert f.read().rsplit(")", 1)[1].split()[0] == "Z"
        assert wait_gone(here, timeout=5)
    finally:
        child.kill()
        child.wait()
    assert wait_gone(here, timeout=5)  # reaped
    assert not wait_gone({"host": "elsewhere.invalid", "pid": child.pid}, timeout=5)
    assert not wait_gone(None)
    assert Worker.where(None) == {"host": socket.gethostname(), "pid": os.getpid()}
