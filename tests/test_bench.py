"""``monst3r-rt bench`` / ``monst3r_rt.bench``: tiny random network, CPU."""

from __future__ import annotations

import copy
import itertools
import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tiny_models import TINY_LINEAR  # noqa: E402

from monst3r_rt import bench  # noqa: E402
from monst3r_rt.bench import harness  # noqa: E402
from monst3r_rt.cli import main  # noqa: E402

SIZE = (32, 48)  # (H, W)
TINY_ARGS = ["bench", "--random", "--config", "tiny", "--size", "48x32", "-q"]


def _run(**kw):
    args = dict(random=True, config=TINY_LINEAR, size=SIZE, device="cpu", warmup=1, repeat=2)
    args.update(kw)
    return bench.run(**args)


@pytest.fixture(scope="module")
def full_run():
    """Every stage, backend and precision at two batch sizes: one row per combination."""
    settings: dict = {}
    recs = _run(backends="torch,onnxruntime,tensorrt", precisions="fp32,bf16,fp16",
                batches=[1, 2], frames=3, settings=settings)  # fmt: skip
    return recs, settings


def test_every_combination_has_a_row(full_run):
    recs, _ = full_run
    got = {(r.stage, r.backend, r.precision, r.batch) for r in recs if r.stage != "align"}
    kinds, precs = ("torch", "onnxruntime", "tensorrt"), ("fp32", "bf16", "fp16")
    want = {(s, k, p, b) for s, k, p, b in itertools.product(
        ("encoder", "decoder", "pair"), kinds, precs, (1, 2))}  # fmt: skip
    want |= {("stream", k, p, 1) for k, p in itertools.product(kinds, precs)}
    want |= {("pipeline", k, p, 1) for k, p in itertools.product(kinds, precs)}
    want |= {(s, "official", "fp32", 1) for s in ("encoder", "decoder", "pair")}
    assert got == want
    assert {r.variant for r in recs if r.stage == "align"} == {"adam", "lm"}
    for r in recs:
        assert r.status in ("ok", "skipped", "failed")
        if r.ok:
            assert r.samples >= 1 and r.p50_ms > 0 and r.throughput > 0, r
            assert r.p50_ms <= r.p95_ms <= r.p99_ms
            assert r.peak_rss_mb > 0
        else:
            assert r.reason, r  # never a silent gap
    ok = {(r.stage, r.backend, r.precision) for r in recs if r.ok}
    assert ("encoder", "torch", "fp32") in ok and ("stream", "torch", "fp32") in ok
    assert ("align", "none", "fp32") in ok
    by = {(r.stage, r.backend, r.precision, r.batch): r for r in recs}
    assert "TensorRT" in by[("pair", "tensorrt", "fp32", 1)].reason
    assert "--engine" in by[("pair", "onnxruntime", "fp32", 1)].reason
    assert "fp16 on CPU" in by[("pair", "torch", "fp16", 1)].reason
    assert "224 or 512" in by[("pipeline", "torch", "fp32", 1)].reason


def test_rows_carry_their_numbers(full_run):
    recs, _ = full_run
    stream = next(r for r in recs if r.stage == "stream" and r.backend == "torch" and r.ok)
    assert stream.samples == 3 and stream.frames == 3
    assert {"network", "track"} <= set(stream.breakdown)
    for r in (r for r in recs if r.stage == "align"):
        assert r.ok and r.frames == 3
        assert r.extra["iterations"] >= 1
        # iterations/s is the optimisation phase's rate: iterations / its median time
        np.testing.assert_allclose(r.throughput, r.extra["iterations"] / (
            r.breakdown["optimize"] / 1e3), rtol=1e-9)  # fmt: skip
    # the throughput is items per call over the mean latency
    enc = next(r for r in recs if r.stage == "encoder" and r.backend == "torch" and r.batch == 2
               and r.precision == "fp32")  # fmt: skip
    np.testing.assert_allclose(enc.throughput, 2 / (enc.mean_ms / 1e3), rtol=1e-9)
    # speed-ups are ratios against the baseline row of the same stage
    base = next(r for r in recs if r.baseline and r.stage == "encoder")
    assert base.speedup == 1.0
    np.testing.assert_allclose(enc.speedup, enc.throughput / base.throughput, rtol=1e-12)


def test_json_validates_and_round_trips(full_run, tmp_path):
    recs, settings = full_run
    doc = bench.make_document(recs, bench.machine_info(), settings, elapsed_s=1.0)
    path = tmp_path / "out.json"
    bench.save_json(doc, path)
    back = bench.load_json(path)
    assert back == json.loads(json.dumps(doc))
    assert back["version"] == bench.SCHEMA_VERSION
    assert [r.to_dict() for r in bench.records.records_of(back)] == doc["records"]
    bad = copy.deepcopy(back)
    bad["records"][0]["status"] = "great"
    with pytest.raises(bench.SchemaError, match=r"records\[0\]\.status"):
        bench.validate(bad)
    missing = copy.deepcopy(back)
    del missing["records"][0]["p50_ms"]
    with pytest.raises(bench.SchemaError, match="p50_ms"):
        bench.validate(missing)
    with pytest.raises(bench.SchemaError, match="newer"):
        bench.validate(dict(back, version=bench.SCHEMA_VERSION + 1))
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(back, bench.SCHEMA)  # an independent validator agrees
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, bench.SCHEMA)


def test_pipeline_row():
    recs = _run(backends="torch", stages="pipeline", size=(128, 224), frames=3, repeat=1)
    (r,) = recs
    assert r.ok, r.reason
    assert r.frames == 3 and r.samples == 1
    assert {"frames", "pairs", "align"} <= set(r.breakdown)
    np.testing.assert_allclose(r.throughput, 3 / (r.mean_ms / 1e3), rtol=1e-9)


def test_compare_flags_a_2x_regression(full_run):
    recs, _ = full_run
    same = bench.compare(recs, copy.deepcopy(recs), fail_above=0.10)
    assert same.regressed == []
    assert all(v in ("ok", "not measured") for *_, v in same.rows)
    slow = copy.deepcopy(recs)
    target = next(r for r in slow if r.ok and r.stage == "decoder")
    target.p50_ms *= 2
    c = bench.compare(recs, slow, fail_above=0.10)
    assert c.regressed == [target.label()]
    row = next(r for r in c.rows if r[0] == target.label())
    np.testing.assert_allclose(row[3], 2.0)
    assert bench.compare(recs, slow, fail_above=1.5).regressed == []  # within tolerance


def test_cli_compare_exit_status(tmp_path, capsys):
    out = tmp_path / "new.json"
    args = [*TINY_ARGS, "--backend", "torch", "--stage", "encoder", "--repeat", "2"]
    assert main([*args, "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["records"][0]["baseline"] and doc["records"][1]["backend"] == "torch"
    # an old run far faster: every row now regressed → exit 1
    fast = copy.deepcopy(doc)
    for r in fast["records"]:
        r["p50_ms"] /= 1e4  # far beyond any run-to-run noise (also on a loaded machine)
    (tmp_path / "fast.json").write_text(json.dumps(fast))
    assert main([*args, "--compare", str(tmp_path / "fast.json")]) == 1
    assert "regressed" in capsys.readouterr().err
    slow = copy.deepcopy(doc)
    for r in slow["records"]:
        r["p50_ms"] *= 1e4
    (tmp_path / "slow.json").write_text(json.dumps(slow))
    assert main([*args, "--compare", str(tmp_path / "slow.json"), "--fail-above", "10%"]) == 0


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--backend", "tensorflow"], "unknown backend 'tensorflow'"),
        (["--precision", "int8"], "unknown precision 'int8'"),
        (["--stage", "encoder,render"], "unknown stage 'render'"),
        (["--size", "500x288"], "multiples of 16"),
        (["--batch", "0"], "batch must be positive"),
    ],
)
def test_bad_options_fail_before_any_work(extra, message, monkeypatch, capsys):
    import monst3r_rt.bench.stages as stages
    from monst3r_rt.network import PointmapNet

    def boom(*a, **k):
        raise AssertionError("work started")

    monkeypatch.setattr(PointmapNet, "__init__", boom)
    monkeypatch.setattr(stages, "baseline_row", boom)
    monkeypatch.setattr(bench.machine, "machine_info", boom)
    assert main([*TINY_ARGS, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "monst3r-rt bench: error" in err
    with pytest.raises(ValueError, match=message.split("'")[0]):
        bench.check_options(random=True, **{
            "--backend": {"backends": extra[1]}, "--precision": {"precisions": extra[1]},
            "--stage": {"stages": extra[1]}, "--size": {"size": extra[1]},
            "--batch": {"batches": extra[1]}}[extra[0]])  # fmt: skip
    with pytest.raises(ValueError, match="exactly one"):
        bench.check_options()


def test_unwritable_json_fails_before_any_work(monkeypatch, capsys, tmp_path):
    """``--json`` into a missing folder, or onto a folder, is refused before the run (whose
    results would otherwise be lost at the end)."""
    import monst3r_rt.bench.stages as stages
    from monst3r_rt.network import PointmapNet

    def boom(*a, **k):
        raise AssertionError("work started")

    monkeypatch.setattr(PointmapNet, "__init__", boom)
    monkeypatch.setattr(stages, "baseline_row", boom)
    monkeypatch.setattr(bench.machine, "machine_info", boom)
    assert main([*TINY_ARGS, "--json", str(tmp_path / "missing" / "b.json")]) == 2
    assert f"folder {tmp_path / 'missing'} does not exist" in capsys.readouterr().err
    assert main([*TINY_ARGS, "--json", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_baseline_is_measured_not_copied(monkeypatch):
    from monst3r_rt.network import PointmapNet

    calls = {"forward": 0}
    forward = PointmapNet.forward

    def counting(self, *a, **k):
        calls["forward"] += 1
        return forward(self, *a, **k)

    monkeypatch.setattr(PointmapNet, "forward", counting)
    recs = _run(backends="torch", stages="pair", warmup=1, repeat=3)
    base, row = recs
    assert base.baseline and base.backend == "official" and base.samples == 3
    assert row.backend == "torch" and not row.baseline
    # net(img1, img2) ran once per warm-up and measured call of the baseline row only (the
    # torch row goes through encode + decode)
    assert calls["forward"] == 1 + 3
    assert base.p50_ms != row.p50_ms


def test_onnxruntime_rows_with_export():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    recs = _run(backends="onnxruntime", precisions="fp32,bf16", stages="encoder,decoder",
                export=True)  # fmt: skip
    by = {(r.stage, r.precision): r for r in recs if r.backend == "onnxruntime"}
    assert by[("encoder", "fp32")].ok and by[("decoder", "fp32")].ok
    assert by[("encoder", "fp32")].runtime.startswith("onnxruntime-cpu")
    assert by[("encoder", "bf16")].status == "skipped"
    assert "bf16 export is not supported" in by[("encoder", "bf16")].reason


def test_ctrl_c_prints_rows_and_writes_json(monkeypatch, tmp_path, capsys):
    import monst3r_rt.bench.stages as stages

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(stages, "stream_row", interrupt)
    out = tmp_path / "partial.json"
    rc = main([*TINY_ARGS, "--backend", "torch", "--stage", "encoder,stream", "--repeat", "1",
               "--json", str(out)])  # fmt: skip
    assert rc == 130
    assert "interrupted" in capsys.readouterr().err
    doc = bench.load_json(out)
    assert doc["interrupted"] is True
    assert [r["stage"] for r in doc["records"]] == ["encoder", "encoder"]


def test_harness_counts_percentiles_and_memory():
    seen = []
    m = harness.measure(lambda k: seen.append(k), warmup=2, repeat=5)
    assert seen == [-2, -1, 0, 1, 2, 3, 4]
    assert len(m.samples_s) == 5 and m.timer == "perf_counter"
    x = np.array([3.0, 1.0, 2.0, 10.0])
    np.testing.assert_allclose(harness.percentiles(x), np.percentile(x, [50, 95, 99]) * 1e3)
    assert np.isnan(harness.percentiles([])).all()
    base = harness.rss_mb()

    def allocate(k):
        a = np.ones(64 * 2**20 // 8)  # 64 MiB touched
        return a.sum()

    m = harness.measure(allocate, warmup=0, repeat=1)
    if harness.reset_peak_rss():  # Linux: the peak is this block's
        assert m.memory.rss_mb >= base + 48
        assert m.memory.gpu_allocated_mb is None
