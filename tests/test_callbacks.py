"""ExpertUsage: statistics in History, CSVLogger and its own per-epoch table."""

import csv

import keras
import numpy as np

from moe_keras import MoEDense
from moe_keras.callbacks import ExpertUsage


def test_expert_usage_reaches_history_csvlogger_and_table(tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((5,))
    outputs = keras.layers.Dense(2, activation="softmax")(MoEDense(4, num_experts=3, name="moe")(inputs))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x = np.random.default_rng(0).normal(size=(64, 5)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    usage = ExpertUsage(csv_path=str(tmp_path / "usage.csv"))
    history = model.fit(
        x, y, epochs=2, batch_size=16, verbose=0,
        callbacks=[usage, keras.callbacks.CSVLogger(str(tmp_path / "log.csv"))],
    )
    for key in ("moe_entropy", "moe_max_load_ratio", "moe_dead_experts", "moe_load_0", "moe_load_2"):
        assert len(history.history[key]) == 2
    loads = [history.history[f"moe_load_{i}"][-1] for i in range(3)]
    assert abs(sum(loads) - 1) < 1e-6
    # Counters are reset every epoch: each epoch counts its own 64 tokens.
    assert [row["tokens"] for row in usage.rows] == [64.0, 64.0]
    with open(tmp_path / "log.csv") as file:
        logged = list(csv.DictReader(file))
    assert "moe_entropy" in logged[0] and len(logged) == 2
    with open(tmp_path / "usage.csv") as file:
        table = list(csv.DictReader(file))
    assert [row["epoch"] for row in table] == ["0", "1"] and "load_1" in table[0]
