"""Keras callbacks that expose what the MoE layers' routers are doing."""

import keras

from moe_keras.usage import moe_layers


class ExpertUsage(keras.callbacks.Callback):
    """Writes each MoE layer's routing statistics into the epoch logs.

    At the start of every epoch the layers' counters are reset; at its end
    the statistics of that epoch's training batches are added to `logs`, so
    they land in `History.history`, in the progress bar, and in `CSVLogger`
    and `TensorBoard` when those come *after* this callback in the list. For
    a layer named `moe` the keys are `moe_entropy` (nats of the expert load;
    `log(n)` is perfect balance), `moe_max_load_ratio` (1.0 is perfect),
    `moe_dead_experts`, `moe_dropped_fraction` and, with
    `per_expert_load=True`, `moe_load_0` ... `moe_load_{n-1}`. For a file
    of them, put `keras.callbacks.CSVLogger` after this callback.

    `rows` keeps the same statistics in memory, one dict per epoch and layer
    (`epoch`, `layer`, the `routing_stats()` values with `tokens`, and
    `load_0` ...).

    Args:
        per_expert_load: also log the load fraction of every expert.

    Example:

    ```python
    history = model.fit(x, y, epochs=5, callbacks=[
        ExpertUsage(), keras.callbacks.CSVLogger("log.csv")])
    history.history["moe_entropy"]
    ```
    """

    def __init__(self, per_expert_load=True):
        super().__init__()
        self.per_expert_load = per_expert_load
        self.rows = []

    def on_train_begin(self, logs=None):
        self._layers = moe_layers(self.model)
        self.rows = []

    def on_epoch_begin(self, epoch, logs=None):
        for layer in self._layers:
            layer.reset_routing_stats()

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        for layer in self._layers:
            stats = layer.routing_stats()
            prefix = layer.name
            logs[f"{prefix}_entropy"] = stats["entropy"]
            logs[f"{prefix}_max_load_ratio"] = stats["max_load_ratio"]
            logs[f"{prefix}_dead_experts"] = stats["dead_experts"]
            logs[f"{prefix}_dropped_fraction"] = stats["dropped_fraction"]
            if self.per_expert_load:
                for index, load in enumerate(stats["load"]):
                    logs[f"{prefix}_load_{index}"] = load
            row = {"epoch": epoch, "layer": prefix}
            row.update({k: v for k, v in stats.items() if k != "load"})
            row.update({f"load_{i}": v for i, v in enumerate(stats["load"])})
            self.rows.append(row)
