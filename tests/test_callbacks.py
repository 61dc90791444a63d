"""ExpertUsage: routing statistics in the epoch logs, so History and a
CSVLogger placed after it record them."""

import csv

import keras
import numpy as np
import pytest

from moe_keras import MoEDense
from moe_keras.callbacks import ExpertUsage

STAT_COLUMNS = {"moe_entropy", "moe_max_load_ratio", "moe_dead_experts", "moe_dropped_fraction"}
LOAD_COLUMNS = {"moe_load_0", "moe_load_1", "moe_load_2"}


def fit_with_csvlogger(path, **usage_args):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((5,))
    outputs = keras.layers.Dense(2, activation="softmax")(MoEDense(4, num_experts=3, name="moe")(inputs))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x = np.random.default_rng(0).normal(size=(64, 5)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    usage = ExpertUsage(**usage_args)
    history = model.fit(x, y, epochs=2, batch_size=16, verbose=0,
                        callbacks=[usage, keras.callbacks.CSVLogger(str(path))])
    with open(path, newline="") as file:
        logged = list(csv.DictReader(file))
    return usage, history.history, logged


def test_csvlogger_after_expert_usage_writes_the_moe_columns(tmp_path):
    usage, history, logged = fit_with_csvlogger(tmp_path / "log.csv")
    assert len(logged) == 2 and [row["epoch"] for row in logged] == ["0", "1"]
    moe_columns = {c for c in logged[0] if c.startswith("moe_")}
    assert moe_columns == STAT_COLUMNS | LOAD_COLUMNS
    for epoch, (row, stats) in enumerate(zip(logged, usage.rows)):
        assert stats["epoch"] == epoch and stats["layer"] == "moe"
        # The file holds this epoch's statistics, the same as History's.
        for column in moe_columns:
            key = column.removeprefix("moe_")
            assert float(row[column]) == pytest.approx(stats[key]), column
            assert float(row[column]) == pytest.approx(history[column][epoch]), column
        assert sum(float(row[c]) for c in LOAD_COLUMNS) == pytest.approx(1.0)
        assert float(row["moe_dead_experts"]) == sum(float(row[c]) == 0 for c in LOAD_COLUMNS)
    # Counters are reset every epoch: each epoch counts its own 64 tokens.
    assert [stats["tokens"] for stats in usage.rows] == [64.0, 64.0]


def test_without_per_expert_load_only_the_summary_columns(tmp_path):
    _, history, logged = fit_with_csvlogger(tmp_path / "log.csv", per_expert_load=False)
    assert {c for c in logged[0] if c.startswith("moe_")} == STAT_COLUMNS
    assert not LOAD_COLUMNS & set(history)


def test_csv_path_is_gone_csvlogger_writes_the_file():
    with pytest.raises(TypeError):
        ExpertUsage(csv_path="usage.csv")
    assert not hasattr(ExpertUsage, "write_csv")


def test_expert_usage_on_a_subclassed_model_built_by_fit():
    """A subclassed model's MoE layer is built by its first batch, after
    `on_epoch_begin` (TensorFlow): the reset must not need the counters."""

    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.moe = MoEDense(4, num_experts=4, top_k=2, name="moe")
            self.head = keras.layers.Dense(2)

        def call(self, x, training=None):
            return self.head(self.moe(x, training=training))

    model = Net()
    model.compile("adam", "mse")
    x = np.random.default_rng(0).normal(size=(8, 6)).astype("float32")
    history = model.fit(x, np.zeros((8, 2)), epochs=1, verbose=0, callbacks=[ExpertUsage()])
    assert np.isfinite(history.history["moe_entropy"][0])
    assert model.moe.routing_stats()["tokens"] == 8 * 2


def test_routing_stats_of_an_unbuilt_layer_are_empty():
    layer = MoEDense(4, num_experts=4)
    layer.reset_routing_stats()
    stats = layer.routing_stats()
    assert stats["tokens"] == 0 and stats["load"] == [0.0] * 4
