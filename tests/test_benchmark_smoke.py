"""Smoke test of `benchmarks/bench_moe.py`: it runs and writes its JSON."""

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_bench_moe_quick_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.setdefault("KERAS_BACKEND", "jax")
    process = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_moe.py"), "--quick",
         "--pipeline", "--json", str(out)],
        env=env, capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert process.returncode == 0, process.stderr[-4000:]
    result = json.loads(out.read_text())

    machine = result["machine"]
    for key in ("platform", "cpu_count", "backend", "keras", "tensorflow",
                "jax", "device"):
        assert key in machine
    assert machine["backend"] == env["KERAS_BACKEND"]

    rows = {(r["layer"], r["dispatch"], r["n"], r["k"]): r for r in result["rows"]}
    expected = {
        ("Dense", "baseline", None, 1),
        ("MoEDense", "dense", 8, 1),
        ("MoEDense", "sparse", 8, 1),
        ("Conv2D", "baseline", None, None),
        ("MoEConv2D", "dense", 4, 1),
        ("MoEConv2D", "sparse", 4, 1),
        ("pipeline", "cnn-dense-h64", None, None),
        ("pipeline", "cnn-dense-h192", None, None),
        ("pipeline", "cnn-moe3of5-h64", 5, 3),
    }
    assert set(rows) == expected
    for key, row in rows.items():
        assert row["ms"] > 0, key
        if key[1] not in ("baseline", "cnn-dense-h64"):
            assert row["vs_baseline"] > 0, key
    assert rows[("MoEDense", "sparse", 8, 1)]["vs_n8"] == 1.0


def _bench_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_moe", ROOT / "benchmarks" / "bench_moe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_median_rows_takes_each_configurations_median_pass():
    bench = _bench_module()
    passes = [
        [dict(layer="MoEDense", dispatch="sparse", n=8, k=1, ms=ms, fwd_bwd_ms=fb)]
        for ms, fb in ((10.0, 4.0), (30.0, 5.0), (20.0, 100.0))
    ]
    (row,) = bench.median_rows(passes)
    assert row["ms"] == 20.0 and row["fwd_bwd_ms"] == 5.0
    assert row["ms_passes"] == [10.0, 30.0, 20.0]
    # torch has no forward+backward timing: None stays None.
    (row,) = bench.median_rows([[dict(ms=1.0, fwd_bwd_ms=None)], [dict(ms=3.0, fwd_bwd_ms=None)]])
    assert row["ms"] == 2.0 and row["fwd_bwd_ms"] is None
    # Pipeline rows time the whole step only and have no fwd_bwd_ms key.
    (row,) = bench.median_rows([[dict(ms=1.0)], [dict(ms=5.0)], [dict(ms=2.0)]])
    assert row["ms"] == 2.0 and "fwd_bwd_ms" not in row
