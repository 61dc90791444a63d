"""Smoke test of `benchmarks/bench_moe.py`: it runs and writes its JSON."""

import json
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from conftest import load_script

ROOT = pathlib.Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "bench_moe.py"


def check_ratios(rows):
    """Every time positive and finite; `vs_baseline` and `vs_n8` (and their
    `fwd_bwd_` twins) equal to the quotients of the rows' own times."""
    rows = {(r["layer"], r["dispatch"], r["n"], r["k"]): r for r in rows}
    for key, row in rows.items():
        assert math.isfinite(row["ms"]) and row["ms"] > 0, key
        if row.get("fwd_bwd_ms") is not None:
            assert math.isfinite(row["fwd_bwd_ms"]) and row["fwd_bwd_ms"] > 0, key
    baselines = {"MoEDense": ("Dense", "baseline", None, 1), "MoEConv2D": ("Conv2D", "baseline", None, None),
                 "pipeline": ("pipeline", "cnn-dense-h64", None, None)}
    for prefix, metric in (("", "ms"), ("fwd_bwd_", "fwd_bwd_ms")):
        for (layer, dispatch, n, k), row in rows.items():
            if dispatch in ("baseline", "cnn-dense-h64"):
                assert f"{prefix}vs_baseline" not in row
                continue
            if row.get(metric) is None:
                continue
            base = rows[baselines[layer]]
            assert row[f"{prefix}vs_baseline"] == pytest.approx(row[metric] / base[metric], rel=1e-9), (layer, dispatch, n)
            reference = rows.get((layer, dispatch, 8, k))
            if reference is None:
                assert f"{prefix}vs_n8" not in row, (layer, dispatch, n)
            else:
                assert row[f"{prefix}vs_n8"] == pytest.approx(row[metric] / reference[metric], rel=1e-9), (
                    layer, dispatch, n)


def test_bench_moe_quick_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.setdefault("KERAS_BACKEND", "jax")
    # Two expert counts, so that vs_n8 of n=4 divides two different rows.
    process = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--experts", "4,8",
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
    assert result["config"]["experts"] == [4, 8]

    rows = {(r["layer"], r["dispatch"], r["n"], r["k"]): r for r in result["rows"]}
    expected = {
        ("Dense", "baseline", None, 1),
        ("MoEDense", "dense", 4, 1),
        ("MoEDense", "sparse", 4, 1),
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
    check_ratios(result["rows"])
    for dispatch in ("dense", "sparse"):
        assert "vs_n8" in rows[("MoEDense", dispatch, 4, 1)]
        if machine["backend"] != "torch":  # torch has no forward+backward timing
            assert "fwd_bwd_vs_n8" in rows[("MoEDense", dispatch, 4, 1)]


def test_median_rows_takes_each_configurations_median_pass():
    bench = load_script("benchmarks/bench_moe.py")
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


def test_peer_benchmark_quick_writes_a_record(tmp_path):
    bench = load_script("benchmarks/bench_peers.py")
    out = tmp_path / "peers.json"
    record = bench.main(["--quick", "--floors", "--models", "dense_ffn,moe_default,moe_cf1.25",
                         "--json", str(out)])
    saved = json.loads(out.read_text())
    assert saved["rows"] == json.loads(json.dumps(record["rows"]))
    assert {"command", "config", "seed", "versions", "machine", "timings"} <= set(saved)
    cases = {(r["model"], r["n"], r["k"]) for r in saved["rows"]}
    # The Dense FFN is built once per k; each MoE for every n and k.
    assert cases == {("dense_ffn", 4, 1), ("dense_ffn", 4, 2)} | {
        (m, n, k) for m in ("moe_default", "moe_cf1.25") for n in (4, 8) for k in (1, 2)}
    for row in saved["rows"]:
        timed = row["train_ms"] + row["predict_ms"] + row["sgd_update_ms"] + row["weights_read_ms"]
        assert len(timed) == 4 and all(0 < t < 60_000 for t in timed)
        if row["model"].startswith("moe"):
            assert row["train_max_load_ratio"] >= 1.0


def test_peer_benchmark_weight_floors_update_and_read_every_weight():
    import keras

    bench = load_script("benchmarks/bench_peers.py")
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    model.layers[1].set_weights([np.full((3, 2), 2.0, "float32"), np.zeros(2, "float32")])
    update, read = bench.weight_floor_calls(model)
    # 6 kernel entries of 2 and 2 biases of 0 sum to 12.
    assert float(read()) == pytest.approx(12.0)
    update()
    update()
    # Each update subtracts 0.01 * 1e-3 from each of the 8 weights.
    assert float(read()) == pytest.approx(12.0 - 2 * 8 * 1e-5, abs=1e-6)
    # Copies: the model's own weights are untouched.
    assert float(model.layers[1].kernel.numpy().sum()) == 12.0


def test_peer_floors_from_a_handmade_record():
    from pipelines.reports import peer_floors

    def row(model, n, params, train, predict, update, read):
        return {"model": model, "n": n, "k": 2, "params": params, "train_ms": [train],
                "predict_ms": [predict], "sgd_update_ms": [update], "weights_read_ms": [read]}

    run = {"rows": [row("dense_ffn", 8, 1000, 20.0, 10.0, 1.0, 0.5),
                    row("moe_default", 8, 8000, 30.0, 12.0, 3.0, 1.5),
                    row("moe_default", 64, 64000, 50.0, 16.0, 17.0, 5.5)]}
    train, predict = peer_floors(run)
    # (20 + 17 - 1) / 20 = 1.8; (30 + 17 - 3) / 30 = 1.47.
    assert "17.0 ms, against 1.0 ms" in train and "is 1.80x the Dense FFN's" in train
    assert train.endswith("is 1.47x n=8's")
    # (10 + 5.5 - 0.5) / 10 = 1.5; (12 + 5.5 - 1.5) / 12 = 1.33.
    assert "is 1.50x the Dense FFN's" in predict and predict.endswith("is 1.33x n=8's")
    assert peer_floors({"rows": [{**r, "sgd_update_ms": []} for r in run["rows"]]}) == []


def test_peer_verdicts_from_a_handmade_record():
    from pipelines.reports import peer_verdicts

    def row(model, n, train, predict):
        return {"model": model, "n": n, "k": 2, "train_ms": train, "predict_ms": predict}

    run = {"rows": [
        row("dense_ffn", 8, [100.0, 200.0], [40.0, 40.0]),
        row("moe_default", 8, [110.0, 220.0], [44.0, 40.0]),
        row("moe_default", 64, [120.0, 260.0], [48.0, 60.0]),
        row("keras_hub_mixtral", 64, [3000.0], [1500.0]),
    ]}
    lines = peer_verdicts(run)
    # Pass by pass: 120/100 = 1.2 and 260/200 = 1.3, median 1.25.
    assert lines[0] == "train step over the equal-active Dense FFN: 1.25 (1.20-1.30) (target <= 1.3): met"
    # 48/40 = 1.2, 60/40 = 1.5: median 1.35.
    assert lines[1] == "predict over the equal-active Dense FFN: 1.35 (1.20-1.50) (target <= 1.2): missed"
    assert lines[2] == "train step, n=64 over n=8: 1.14 (1.09-1.18) (target <= 1.15): met"
    # 120/110 = 1.091, 260/220 = 1.182: median 1.136.
    # One KerasHub pass against both of ours: 3000/120 = 25, 3000/260 = 11.5.
    assert lines[4] == "KerasHub's train step over ours: 18.27 (11.54-25.00) (target >= 20.0): missed"


def test_peer_engine_table_from_two_handmade_records():
    from pipelines.reports import peer_engine_table

    def row(model, n, train, predict):
        return {"model": model, "n": n, "k": 2, "train_ms": train, "predict_ms": predict}

    before = {"rows": [row("dense_ffn", 64, [20.0, 40.0], [10.0, 10.0]),
                       row("moe_default", 64, [40.0, 100.0], [20.0, 30.0])]}
    after = {"rows": [row("dense_ffn", 64, [30.0, 30.0], [8.0, 12.0]),
                      row("moe_default", 64, [45.0, 60.0], [12.0, 12.0]),
                      row("moe_default", 256, [90.0, 90.0], [20.0, 20.0])]}
    table = peer_engine_table(before, after)
    # Each run over its own Dense FFN, pass by pass: before 40/20 = 2.0 and
    # 100/40 = 2.5; after 45/30 = 1.5 and 60/30 = 2.0; predict before 2.0
    # and 3.0, after 1.5 and 1.0. n=256 has no "before" row: left out.
    assert "| 64 | 2 | 70.0 (40.0-100.0) / 52.5 (45.0-60.0) | 2.25 (2.00-2.50) / 1.75 (1.50-2.00) |" in table
    assert "| 2.50 (2.00-3.00) / 1.25 (1.00-1.50) |" in table
    assert "| 256 |" not in table


def test_imbalance_benchmark_quick_collapses_the_router_and_restores_the_bound(tmp_path):
    import importlib.util

    from moe_keras.dispatch import strategy

    spec = importlib.util.spec_from_file_location(
        "bench_kernels", pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "bench_kernels.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bound = strategy.ROWS_MIN_IMBALANCE
    record = bench.main(["--quick", "--imbalance", "--predict", "--json", str(tmp_path / "imbalance.json")])
    assert strategy.ROWS_MIN_IMBALANCE == bound
    rows = json.loads((tmp_path / "imbalance.json").read_text())["rows"]
    assert {r["engine"] for r in rows} == {"dense", "buffers", "rows", "auto"}
    assert all(len(r["predict_ms"]) == len(r["train_ms"]) == 1 and r["predict_ms"][0] > 0 for r in rows)
    busiest = {r["router"]: r["busiest_over_mean"] for r in rows}
    # n=4, k=1: the collapsed router sends every token to expert 0.
    assert busiest["collapsed"] == 4.0
    assert busiest["spread"] < 2.0
    assert record["rows"] == rows


def test_kernel_benchmark_dispatch_only_times_dense_einsum_and_dropless(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bench_kernels", pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "bench_kernels.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--quick", "--dispatch", "--json", str(tmp_path / "kernels.json")])
    rows = json.loads((tmp_path / "kernels.json").read_text())["rows"]
    # --quick's ratios 2/1 and 4/1, each dense, dense as stacked einsums and
    # dropless; no grouped-kernel rows.
    assert sorted((r["n"], r["k"], r["dispatch"]) for r in rows) == [
        (2, 1, "dense"), (2, 1, "dense_einsum"), (2, 1, "sparse"),
        (4, 1, "dense"), (4, 1, "dense_einsum"), (4, 1, "sparse")]
    assert all(r["table"] == "dispatch" and len(r["train_ms"]) == 1 and r["train_ms"][0] > 0 for r in rows)


def test_kernel_benchmark_stacked_einsums_compute_the_dense_dispatch_mixture():
    import importlib.util

    import keras

    from moe_keras import MoEDense

    spec = importlib.util.spec_from_file_location(
        "bench_kernels", pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "bench_kernels.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    x = np.random.default_rng(0).normal(size=(6, 5)).astype("float32")
    layers = [cls(3, num_experts=4, top_k=2, expert_hidden=7, num_shared_experts=1, dispatch="dense")
              for cls in (MoEDense, bench.stacked_einsum_moe())]
    for layer in layers:
        layer.build(x.shape)
    layers[1].set_weights(layers[0].get_weights())
    stacked, plain = (keras.ops.convert_to_numpy(layer(x)) for layer in layers[::-1])
    np.testing.assert_allclose(stacked, plain, rtol=1e-4, atol=1e-5)


def test_dropless_profile_quick_times_every_piece(tmp_path):
    import keras

    if keras.backend.backend() != "tensorflow":
        pytest.skip("profile_dropless.py profiles TensorFlow's call")
    bench = load_script("benchmarks/profile_dropless.py")
    out = tmp_path / "profile.json"
    record = bench.main(["--quick", "--json", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert rows == json.loads(json.dumps(record["rows"]))
    assert [(row["n"], row["k"], row["mode"]) for row in rows] == [(4, 2, "predict"), (4, 2, "train")]
    for row in rows:
        # 64 tokens x 2 choices over 4 experts: the busiest holds at least
        # the mean load, 32, and at most every token, 64.
        assert 1.0 <= row["busiest_over_mean"] <= 2.0
        assert all(len(row[piece]) == 1 and row[piece][0] > 0 for piece in bench.PIECES)


def test_profile_table_from_a_handmade_record():
    from pipelines.reports import profile_table

    row = {"n": 64, "k": 2, "mode": "train", "busiest_over_mean": 1.234, "dense_ffn": [8.0, 8.0],
           "layer": [16.0, 12.0], "route": [1.0, 1.0], "sort_permute": [2.0, 2.0], "experts_on_rows": [10.0, 9.0],
           "mixture": [13.0, 12.0], "plain_matmuls": [8.0, 6.0]}
    table = profile_table({"config": {"tokens": 4096}, "rows": [row]})
    # Layer over FFN 2.0 and 1.5 (median 1.75); experts over plain matmuls
    # 1.25 and 1.5 (median 1.375).
    assert "| 64 | 2 | train | 1.23 |" in table
    assert "| 12.5 (12.0-13.0) | 7.0 (6.0-8.0) | 1.75 (1.50-2.00) | 1.38 (1.25-1.50) |" in table


def test_branch_profile_quick_times_every_variant_under_both_allocators(tmp_path):
    bench = load_script("benchmarks/profile_branches_jax.py")
    out = tmp_path / "branches.json"
    bench.main(["--quick", "--json", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [row["allocator"] for row in rows] == ["default", "raised mmap threshold"]
    assert rows[1]["env"] == bench.RAISED_MALLOC
    for row in rows:
        # The taken rung holds the busiest expert and is on the ladder.
        assert row["busiest"] <= row["taken_rung"] and row["taken_rung"] in row["ladder"]
        assert all(row["ms"][v] > 0 for v in bench.VARIANTS)


def test_branch_table_from_a_handmade_record():
    from pipelines.reports import profile_branches

    class Stub:
        def glob(self, pattern):
            return [pattern]

        def json(self, path):
            ms = dict(taken_rung=10.0, two_rungs=11.0, ladder=18.0, ladder_and_overflow=19.0, layer=20.0)
            return {"config": {"tokens": 4096, "features": 256, "hidden": 384, "steps": 15},
                    "machine": {"cpu_count": 2, "accelerator": None},
                    "rows": [{"n": 8, "k": 2, "busiest": 1064, "taken_rung": 1152, "ladder": [1152, 1280],
                              "allocator": "default", "ms": ms}]}

    text = profile_branches(Stub())
    assert "| 8 | 2 | 1064 | 1152 | 1152, 1280 | default | 10.0 | 11.0 | 18.0 | 19.0 | 20.0 |" in text


def test_input_pipeline_benchmark_quick_times_both_inputs(tmp_path):
    bench = load_script("benchmarks/bench_input_pipeline.py")
    out = tmp_path / "stall.json"
    assert bench.main(["--quick", "--data", str(tmp_path / "data"), "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert {"command", "config", "seed", "versions", "machine", "timings"} <= set(record)
    result = record["result"]
    assert result["train_rows"] + result["validation_rows"] == 512
    for key in ("autotune", "pipeline"):
        assert len(result["epoch_s"][key]) == 2 and all(s > 0 for s in result["epoch_s"][key])
        assert result["summary"][key]["median_s"] == result["epoch_s"][key][1]
    assert "1 timed rounds after the first" in bench.table(record)


@pytest.fixture
def looped_calls(monkeypatch):
    """Records each trace of `moe_keras.dispatch.map_experts`, the experts'
    loop, while the test runs."""
    from moe_keras import dispatch

    calls = []
    map_experts = dispatch.map_experts
    monkeypatch.setattr(dispatch, "map_experts", lambda *a: calls.append(1) or map_experts(*a))
    return calls


def test_expert_loop_benchmark_quick_times_both_ways(tmp_path, looped_calls):
    import keras

    if keras.backend.backend() != "jax":
        pytest.skip("the loop is JAX's")
    from moe_keras.dispatch import expert_loop

    shipped = expert_loop.LOOP_PLATFORMS
    bench = load_script("benchmarks/bench_expert_loop.py")
    record = bench.main(["--quick", "--json", str(tmp_path / "loop.json")])
    assert expert_loop.LOOP_PLATFORMS == shipped
    assert looped_calls
    (row,) = json.loads((tmp_path / "loop.json").read_text())["rows"]
    assert row == json.loads(json.dumps(record["rows"][0]))
    assert (row["n"], row["k"]) == (8, 2) and row["busiest_over_mean"] >= 1.0
    assert len(row["loop_ms"]) == len(row["batched_ms"]) == 1 and row["loop_ms"][0] > 0


def test_expert_loop_benchmark_train_loops_in_training_and_restores_the_rule(tmp_path, looped_calls):
    import keras

    if keras.backend.backend() != "jax":
        pytest.skip("the loop is JAX's")
    from moe_keras import dispatch

    shipped = dispatch.loops_over_experts
    bench = load_script("benchmarks/bench_expert_loop.py")
    record = bench.main(["--quick", "--train", "--json", str(tmp_path / "loop.json")])
    assert dispatch.loops_over_experts is shipped and not shipped(True)
    # Traced once for the looped train step (and not for the batched one).
    assert looped_calls
    assert record["config"]["train"] is True and record["rows"][0]["loop_ms"][0] > 0


def test_expert_loop_table_from_a_handmade_record():
    from pipelines.reports import expert_loop_table

    row = {"n": 256, "k": 2, "busiest_over_mean": 1.53, "loop_ms": [50.0, 40.0], "batched_ms": [100.0, 40.0]}
    # Ratios pass by pass: 0.5 and 1.0, median 0.75.
    assert "| 256 | 2 | 1.53 | 45.00 (40.00-50.00) | 70.00 (40.00-100.00) | 0.75 (0.50-1.00) |" in expert_loop_table(
        {"rows": [row]})


def test_einsum_profile_quick_times_both_ways(tmp_path):
    import keras

    if keras.backend.backend() != "jax":
        pytest.skip("the loop is JAX's")
    bench = load_script("benchmarks/profile_einsum_jax.py")
    bench.main(["--quick", "--json", str(tmp_path / "einsum.json")])
    rows = json.loads((tmp_path / "einsum.json").read_text())["rows"]
    assert [(r["n"], r["rows"]) for r in rows] == [(4, 8), (4, 16)]
    # 4 experts x 8 rows x (8 -> 12 -> 8): two matmuls of 2 * 8 * 12 FLOPs per row.
    assert rows[0]["gflop"] == pytest.approx(4 * 8 * 4 * 8 * 12 / 1e9)
    assert all(r["batched_ms"][0] > 0 and r["loop_ms"][0] > 0 for r in rows)


def test_einsum_profile_loop_and_batched_compute_the_same_mlp():
    import keras

    if keras.backend.backend() != "jax":
        pytest.skip("the loop is JAX's")
    from moe_keras.dispatch.expert_loop import map_experts

    bench = load_script("benchmarks/profile_einsum_jax.py")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 5, 4)).astype("float32")
    weights = {"w1": rng.normal(size=(3, 4, 6)).astype("float32"), "w2": rng.normal(size=(3, 6, 4)).astype("float32")}
    expected = np.stack([np.maximum(x[e] @ weights["w1"][e], 0) @ weights["w2"][e] for e in range(3)])
    np.testing.assert_allclose(np.asarray(bench.batched_mlp(x, weights)), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(map_experts(bench.expert_mlp, x, weights)), expected, rtol=1e-5, atol=1e-5)


def test_einsum_profile_table_from_a_handmade_record():
    from pipelines.reports import einsum_profile_table

    row = {"n": 256, "rows": 52, "gflop": 2.0, "batched_ms": [80.0, 100.0, 70.0], "loop_ms": [20.0, 20.0, 35.0]}
    # Median batched 80 ms -> 2 GFLOP / 0.08 s = 25 GFLOP/s; ratios 0.25, 0.2, 0.5 -> median 0.25.
    assert "| 256 | 52 | 80.00 (70.00-100.00) | 25 | 20.00 (20.00-35.00) | 0.25 (0.20-0.50) |" in einsum_profile_table(
        {"rows": [row]})


@pytest.mark.parametrize("script", ["bench_competition.py", "bench_default_run.py", "bench_input_pipeline.py"])
@pytest.mark.parametrize("content", [None, '{"rows": [', "{}"])
def test_table_of_a_missing_or_malformed_record_is_one_line_and_exit_2(script, content, tmp_path):
    record = tmp_path / "record.json"
    if content is not None:
        record.write_text(content)
    process = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--table", str(record)],
                             capture_output=True, text=True, timeout=120)
    if content == "{}" and script == "bench_competition.py":
        # Its table marks every measurement of a partial record "not run".
        assert process.returncode == 0 and "not run" in process.stdout
        return
    assert process.returncode == 2, process.stderr
    assert "Traceback" not in process.stderr
    assert f"--table {record}: not a usable record" in process.stderr
