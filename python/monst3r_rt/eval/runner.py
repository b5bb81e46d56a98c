"""``monst3r-rt eval``: run the method on every sequence of a dataset (or take existing output
folders) and score them (:mod:`monst3r_rt.eval.score`).

Runs are resumable: each sequence's output goes to ``RESULTS/<seq>/``, written atomically (a
folder only exists once complete, with its ``reconstruction.npz``), and a sequence whose folder
is complete is not run again — unless it was written by another configuration: its ``run.json``
records another mode (``stream`` vs ``offline``), or, when the evaluation has a configuration
fingerprint (:func:`monst3r_rt.batch.options_fingerprint` of the weights, options and package
version, as ``monst3r-rt eval`` computes it), another fingerprint than the one recorded under
``eval.fingerprint`` (or none). Such a folder is refused before any run, naming it (its numbers
would be reported as this configuration's), unless ``overwrite`` recomputes it (the old folder
is replaced only once the new one is complete). The whole dataset's layout is validated before
the first run.

Before the first run, every sequence still to run is checked: an existing ``RESULTS/<seq>`` that
is a file, or a non-empty folder without ``reconstruction.npz``, is not ours (our writers only
ever rename a complete folder into place) and is refused, naming it — nothing is deleted. A
killed run's temporary folder beside it, ``RESULTS/.<seq>.partial-*`` (the name
:func:`monst3r_rt._atomic.partial_dir` gives), is ours and incomplete by construction: it is
removed before the sequence runs again. (So do not run two evaluations into one results folder
at once.)
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from .._atomic import commit_dir, partial_dir
from ..batch.fingerprint import record_run, stored_fingerprint
from ..reconstruction import NPZ, Reconstruction
from .datasets import get_dataset
from .score import read_prediction, score_sequence, write_results

__all__ = ["evaluate", "run_sequence", "make_stream_factory"]


def make_stream_factory(
    weights: str | os.PathLike[str] | None = None,
    *,
    backend: Any = "auto",
    engine: str | os.PathLike[str] | None = None,
    device: str = "auto",
    precision: str = "fp32",
    size: int = 512,
    config: Any = None,
    cli: bool = False,
) -> Callable[[str], Any]:
    """The ``stream_factory`` of :func:`evaluate` (and ``monst3r-rt eval --mode stream``): each
    call ``f(out_dir)`` makes a new :class:`~monst3r_rt.Stream` with these arguments (as
    ``Stream``'s; ``backend`` may be a :class:`~monst3r_rt.Backend` instance, e.g. a simulated
    network in tests; ``cli``: errors phrased as command-line flags) writing
    ``output=out_dir``."""

    def factory(out_dir: str) -> Any:
        from ..stream import Stream

        return Stream(weights, backend=backend, engine=engine, device=device,
                      precision=precision, size=size, config=config, output=out_dir,
                      cli=cli)  # fmt: skip

    return factory


def _check_run_target(results: str, seq: str) -> None:
    """Refuse ``results/seq`` unless absent or an empty folder (module docstring)."""
    d = os.path.join(results, seq)
    if os.path.exists(d) and not os.path.isdir(d):
        raise FileExistsError(f"{d} exists and is not a folder; remove it to run the sequence")
    if os.path.isdir(d) and os.listdir(d):
        raise FileExistsError(f"{d} exists without {NPZ}: not a complete output of this "
                              "package; remove it to run the sequence")  # fmt: skip


def _must_rerun(results: str, seq: str, mode: str, pipeline: Any, fingerprint: str | None,
                overwrite: bool) -> bool:  # fmt: skip
    """Whether the complete ``results/seq`` must be recomputed (``overwrite``) because another
    configuration wrote it; without ``overwrite`` that is refused (module docstring). A folder
    whose ``run.json`` records no mode (e.g. written by other code) is taken as this mode's."""
    d = os.path.join(results, seq)
    again = "use a new results folder, or overwrite=True (--overwrite) to recompute it"
    try:
        with open(os.path.join(d, "run.json")) as f:
            recorded = json.load(f).get("mode")
    except (OSError, ValueError, AttributeError):
        recorded = None
    if mode == "stream":
        want = {"stream"}
    elif pipeline is not None:
        want = {getattr(pipeline, "mode", "offline")}
    else:
        want = {"offline", "feedforward"}
    if recorded is not None and recorded not in want:
        if overwrite:
            return True
        raise FileExistsError(f"{d} holds a complete {recorded!r} run, but this evaluation "
                              f"runs mode {mode!r}; {again}")  # fmt: skip
    if fingerprint is None or stored_fingerprint(d, "eval") == fingerprint:
        return False
    if overwrite:
        return True
    raise FileExistsError(f"{d} holds a run of another configuration (weights, options or "
                          f"package version differ from this evaluation's, or are not "
                          f"recorded); {again}")  # fmt: skip


def _remove_partials(results: str, seq: str) -> list[str]:
    """Remove a killed run's ``results/.seq.partial-*`` temporary folders; returns them."""
    found = sorted(glob.glob(os.path.join(glob.escape(results), f".{glob.escape(seq)}.partial-*")))
    found = [p for p in found if os.path.isdir(p) and not os.path.islink(p)]
    for p in found:
        shutil.rmtree(p)
    return found


def _read_rgb(path: str) -> Any:
    import cv2

    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(f"{path}: cannot read the image")
    return img[..., ::-1]


def run_sequence(
    images: Sequence[str],
    out_dir: str,
    mode: str = "offline",
    *,
    pipeline: Any = None,
    stream_factory: Callable[[str], Any] | None = None,
) -> Reconstruction:
    """Run the method on one sequence's frames and save its output folder (atomically).

    Args:
        images: the frames' paths, in order.
        out_dir: the sequence's output folder (must not exist or be empty).
        mode: ``"offline"`` (``pipeline.run``, then ``save``) or ``"stream"`` (one
            :class:`~monst3r_rt.Stream` from ``stream_factory(out_dir)`` fed frame by frame; its
            ``close()`` writes the folder).
        pipeline: a :class:`~monst3r_rt.Pipeline` for ``"offline"``.
        stream_factory: makes a Stream writing ``output=out_dir`` for ``"stream"``.
    """
    if mode == "offline":
        if pipeline is None:
            raise ValueError("run_sequence: mode='offline' needs a pipeline")
        rec = pipeline.run(list(images), progress=False)
        rec.save(out_dir)
        return rec
    if mode == "stream":
        if stream_factory is None:
            raise ValueError("run_sequence: mode='stream' needs a stream_factory")
        with stream_factory(out_dir) as st:
            for p in images:
                st.push(_read_rgb(p))
            return st.close()
    raise ValueError(f"mode must be 'offline' or 'stream', got {mode!r}")


def evaluate(
    dataset: str,
    root: str | os.PathLike[str],
    results: str | os.PathLike[str],
    *,
    mode: str = "offline",
    predictions: str | os.PathLike[str] | None = None,
    sequences: Sequence[str] | None = None,
    align: str = "lad",
    pipeline: Any = None,
    stream_factory: Callable[[str], Any] | None = None,
    fingerprint: str | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Evaluate a dataset: run (or read) every sequence, score it, write the result files.

    Args:
        dataset: ``"sintel"``, ``"tum"``, ``"bonn"``, ``"kitti"`` or ``"davis"``.
        root: the dataset's folder (layouts in :mod:`monst3r_rt.eval.datasets`).
        results: output folder: ``<seq>/`` per run sequence, ``metrics.csv``, ``metrics.json``
            and ``table.md``.
        mode: ``"offline"`` or ``"stream"`` (ignored with ``predictions``).
        predictions: score existing output folders ``predictions/<seq>/`` (this package's or
            the official demo.py's layout) instead of running.
        sequences: a subset of the official sequences (default all).
        align: depth alignment (``"lad"``: the paper's).
        pipeline / stream_factory: what runs a sequence (:func:`run_sequence`); needed only
            for sequences that have no complete output folder yet. A sequence is written into
            a temporary ``RESULTS/.<seq>.partial-*/<seq>`` folder (``stream_factory`` is
            called with it), then its ``run.json`` gets an ``eval`` record (``fingerprint``,
            ``dataset``, ``sequence``) and it is renamed to ``RESULTS/<seq>``.
        fingerprint: the configuration fingerprint of what ``pipeline`` / ``stream_factory``
            run (:func:`monst3r_rt.batch.options_fingerprint` of their options), recorded in
            each run sequence's ``run.json`` under ``eval.fingerprint``; a complete folder is
            then resumed only when it records the same. None: not checked (only the mode is).
        overwrite: recompute complete folders of another configuration (mode or fingerprint)
            instead of refusing them; complete folders of this configuration are still kept.
        log: progress lines (default: stderr).

    Returns:
        ``{"per_sequence", "mean", "skipped", "paths"}``.

    Raises:
        DatasetError / FileNotFoundError naming what is missing (dataset files, prediction
        folders) before any run; FileExistsError naming a sequence folder that cannot be
        resumed (another configuration's, or not this package's output) before any run;
        ValueError on frame-count mismatches.
    """
    say = log or (lambda s: print(s, file=sys.stderr))
    ds = get_dataset(dataset, root)
    official = ds.sequences()
    seqs = list(sequences) if sequences else official
    unknown = [s for s in seqs if s not in official]
    if unknown:
        raise ValueError(f"{dataset}: sequences {unknown} are not in the evaluation list "
                         f"{official}")  # fmt: skip
    ds.check_all(seqs)
    results = os.fspath(results)
    if predictions is not None:
        missing = [s for s in seqs if not os.path.isdir(os.path.join(predictions, s))]
        if missing:
            raise FileNotFoundError(f"{os.fspath(predictions)}: no prediction folders for "
                                    f"sequences {missing}")  # fmt: skip
    else:
        todo = [s for s in seqs if not os.path.isfile(os.path.join(results, s, NPZ))]
        for s in todo:  # a foreign file or non-empty folder is refused before any run
            _check_run_target(results, s)
        # so is a complete folder of another configuration, unless overwrite recomputes it
        todo += [s for s in seqs if s not in todo
                 and _must_rerun(results, s, mode, pipeline, fingerprint, overwrite)]  # fmt: skip
        if todo and (pipeline if mode == "offline" else stream_factory) is None:
            need = "pipeline" if mode == "offline" else "stream_factory"
            raise ValueError(f"{len(todo)} sequences need a run ({todo[:3]}...) but no {need} "
                             "was given")  # fmt: skip
    pose_seqs = set(ds.pose_sequences())
    per_seq: dict[str, dict[str, Any]] = {}
    for k, s in enumerate(seqs):
        data = ds.load(s)
        folder = os.path.join(predictions or results, s)
        if predictions is None and s in todo:
            for p in _remove_partials(results, s):
                say(f"[{k + 1}/{len(seqs)}] {s}: removed a killed run's temporary folder {p}")
            t0 = time.perf_counter()
            again = " (replacing another configuration's output)" if os.path.isdir(folder) else ""
            say(f"[{k + 1}/{len(seqs)}] {s}: running {mode} on {len(data.images)} frames{again}")
            staging = partial_dir(folder)  # .<seq>.partial-*: removed by a rerun if killed
            try:
                inner = os.path.join(staging, s)  # the same name: factories may read it
                run_sequence(data.images, inner, mode, pipeline=pipeline,
                             stream_factory=stream_factory)  # fmt: skip
                record_run(inner, "eval", {"fingerprint": fingerprint, "dataset": dataset,
                                           "sequence": s})  # fmt: skip
                commit_dir(inner, folder)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            say(f"[{k + 1}/{len(seqs)}] {s}: done in {time.perf_counter() - t0:.1f} s")
        elif predictions is None:
            say(f"[{k + 1}/{len(seqs)}] {s}: complete output found, not run again")
        tasks = [t for t in ds.tasks if t != "pose" or s in pose_seqs]
        per_seq[s] = score_sequence(read_prediction(folder), data, dataset, align=align,
                                    tasks=tasks)  # fmt: skip
    info = {"mode": "predictions" if predictions else mode, "align": align, "root": ds.root,
            "predictions": os.fspath(predictions) if predictions else None,
            "fingerprint": None if predictions else fingerprint}  # fmt: skip
    paths = write_results(results, dataset, per_seq, info=info)
    with open(paths["json"]) as f:
        doc = json.load(f)
    return {"per_sequence": per_seq, "mean": doc["mean"], "skipped": doc["skipped"],
            "paths": paths}  # fmt: skip
