"""
Title: A character-level Transformer language model with MoE feed-forward blocks
Description: Python's own help texts (`pydoc_data.topics`) as a corpus; a
causal Transformer whose every other feed-forward block is a `MoEDense`
routing each character position, against the dense model with the same
active parameters, in held-out bits per character, with padding masks.

## What this example shows

A language model predicts each next character from the ones before it. Its
Transformer blocks are causal attention followed by a feed-forward network
(FFN) applied to every position. Switch Transformer / GShard style MoE
language models replace the FFN of every other block with a Mixture-of-
Experts that routes each *position* (token) to its top-k of n expert FFNs:

```python
h = MoEDense(dim, num_experts=4, top_k=2, expert_hidden=64,
             expert_activation="gelu")(x)      # x: (batch, positions, dim)
```

The corpus ships with every Python: `pydoc_data.topics.topics`, the ~80
help topics behind `help("if")` etc., about 465,000 characters. Whole
topics are held out (every 10th in sorted order), so the held-out text is
documents the model never saw.

### Padding masks

Each topic is cut into windows of `context + 1` characters; a topic's last
window is shorter and is padded with id 0. `Embedding(mask_zero=True)`
turns those zeros into a Keras mask that flows through the model: attention
ignores padded keys, and `MoEDense` receives the mask too, so *padding
takes no expert slot and enters no balancing loss or routing statistic*.
The script checks it: over the last training epoch each MoE layer counted
exactly `real tokens x k` expert slots. The loss is weighted by the same
mask, and bits per character are averaged over real characters only.

### Equal active parameters

A position uses k experts of `dim x h + h x dim` weights in an MoE block;
the dense model's FFN `Dense(k * h, "gelu") -> Dense(dim)` has the same
`dim x kh + kh x dim` (the MoE adds its router, `dim x n`, and k-1 output
biases). Same hidden units and FFN FLOPs per position; the MoE holds n/k
times the FFN weights in its MoE blocks.

```bash
python examples/char_lm_moe.py            # 3 seeds x {dense, MoE}, minutes on a 2-core CPU
python examples/char_lm_moe.py --quick    # seconds: 20,000 characters, tiny model, 1 seed
python examples/char_lm_moe.py --table    # Markdown table from reports/records/examples/
```

One JSON record per run (command, config, seed, versions, machine, metrics,
parameter counts, routing counts, timings; no weights) goes into `--out`.
Training runs a fixed number of epochs: the held-out text is only used for
the reported number.
"""

import argparse
import math
import os
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python examples/char_lm_moe.py`
    sys.path.insert(0, str(ROOT))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import moe_keras  # noqa: E402
from moe_keras import MoEDense  # noqa: E402
from moe_keras.callbacks import ExpertUsage  # noqa: E402
from pipelines import arguments  # noqa: E402
from pipelines import records  # noqa: E402

DEFAULT_OUT = ROOT / "reports" / "records" / "examples"
PREFIX = "char_lm_moe"
PAD, UNKNOWN = 0, 1  # ids 2.. are the training text's characters

# The full run: context 128, 4 blocks of 64 features (MoE in blocks 1 and
# 3), MoE(2 of 4) with expert hidden 64 = dense hidden 128.
FULL = dict(context=128, dim=64, heads=4, blocks=4, num_experts=4, top_k=2,
            expert_hidden=64, moe_every=2, epochs=6, batch_size=32,
            learning_rate=2e-3, weight_decay=1e-4, warmup_fraction=0.05,
            switch_loss_weight=0.01, held_out_every=10, max_chars=None,
            seeds=[0, 1, 2])
QUICK = dict(FULL, context=32, dim=32, heads=2, blocks=2, expert_hidden=32,
             epochs=1, batch_size=32, max_chars=20_000, seeds=[0])


# ## Data


def load_corpus(config):
    """The pydoc topics, split into training and held-out topics."""
    from pydoc_data.topics import topics

    names = sorted(topics)
    every = config["held_out_every"]
    # Every `every`-th topic (from the 5th on) is held out.
    held_out = [topics[n] for i, n in enumerate(names) if i % every == every // 2]
    train = [topics[n] for i, n in enumerate(names) if i % every != every // 2]
    if config["max_chars"]:
        train = _truncate(train, config["max_chars"])
        held_out = _truncate(held_out, config["max_chars"] // 4)
    return train, held_out


def _truncate(documents, max_chars):
    """The first documents, cut so that they hold at most `max_chars`."""
    kept, total = [], 0
    for document in documents:
        if total >= max_chars:
            break
        kept.append(document[: max_chars - total])
        total += len(kept[-1])
    return kept


def make_vocabulary(documents):
    characters = sorted(set("".join(documents)))
    return {c: i + 2 for i, c in enumerate(characters)}


def windows(documents, vocabulary, context):
    """(inputs, targets), each `(windows, context)` int32, 0 = padding.

    Every document is cut into windows of `context + 1` characters that
    overlap by one (the last target of a window is the next window's first
    input); a document's last window is padded with zeros. A position whose
    target is padding is padding in the inputs too, so the input mask (from
    `Embedding(mask_zero=True)`) marks exactly the positions with a target.
    """
    rows = []
    for document in documents:
        ids = np.array([vocabulary.get(c, UNKNOWN) for c in document], np.int32)
        for start in range(0, max(len(ids) - 1, 1), context):
            chunk = ids[start:start + context + 1]
            if len(chunk) < 2:
                continue
            rows.append(np.pad(chunk, (0, context + 1 - len(chunk))))
    rows = np.stack(rows)
    inputs, targets = rows[:, :-1].copy(), rows[:, 1:]
    inputs[targets == PAD] = PAD
    return inputs, targets


# ## The model


class PositionEmbedding(keras.layers.Layer):
    """Adds a learned `(sequence, features)` position embedding; keeps the mask."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def build(self, input_shape):
        self.embedding = self.add_weight(
            name="embedding", shape=tuple(input_shape[1:]),
            initializer=keras.initializers.RandomNormal(stddev=0.02))

    def call(self, inputs):
        return inputs + self.embedding


def moe_blocks(config):
    """Indices of the blocks whose FFN is an MoE."""
    return [i for i in range(config["blocks"]) if i % config["moe_every"] == config["moe_every"] - 1]


def feed_forward(x, config, moe, name):
    """The FFN of one block: MoE(k of n) with hidden h, or dense with k * h.

    The mask of `x` reaches `MoEDense.call(mask=...)` by Keras's mask
    propagation; no argument is needed."""
    dim, k, hidden = config["dim"], config["top_k"], config["expert_hidden"]
    if moe:
        return MoEDense(dim, num_experts=config["num_experts"], top_k=k,
                        expert_hidden=hidden, expert_activation="gelu",
                        switch_loss_weight=config["switch_loss_weight"],
                        name=name)(x)
    x = keras.layers.Dense(k * hidden, activation="gelu", name=f"{name}_hidden")(x)
    return keras.layers.Dense(dim, name=f"{name}_out")(x)


def build_language_model(config, vocabulary_size, moe):
    dim = config["dim"]
    inputs = keras.Input((config["context"],), dtype="int32", name="characters")
    x = keras.layers.Embedding(vocabulary_size, dim, mask_zero=True, name="embedding")(inputs)
    x = PositionEmbedding(name="position")(x)
    routed = moe_blocks(config) if moe else []
    for i in range(config["blocks"]):
        h = keras.layers.LayerNormalization(epsilon=1e-6, name=f"block{i}_ln1")(x)
        h = keras.layers.MultiHeadAttention(
            config["heads"], dim // config["heads"], name=f"block{i}_attention")(
                h, h, use_causal_mask=True)
        x = keras.layers.Add(name=f"block{i}_add1")([x, h])
        h = keras.layers.LayerNormalization(epsilon=1e-6, name=f"block{i}_ln2")(x)
        h = feed_forward(h, config, i in routed, name=f"block{i}_{'moe' if i in routed else 'ffn'}")
        x = keras.layers.Add(name=f"block{i}_add2")([x, h])
    x = keras.layers.LayerNormalization(epsilon=1e-6, name="final_ln")(x)
    outputs = keras.layers.Dense(vocabulary_size, name="logits")(x)
    return keras.Model(inputs, outputs, name=f"char_lm_{'moe' if moe else 'dense'}")


def parameter_counts(model, config):
    """Trainable parameters in all, those one position uses, and the FFN
    weights (no biases, no router) one position uses."""
    total = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    moe = moe_keras.usage.moe_layers(model)
    inactive = 0
    for layer in moe:
        per_expert = sum(int(np.prod(w.shape)) // layer.num_experts for w in layer.experts.values())
        inactive += (layer.num_experts - layer.top_k) * per_expert
    d, k, h = config["dim"], config["top_k"], config["expert_hidden"]
    return {"total": total, "active": total - inactive,
            "ffn_weights_per_token": config["blocks"] * k * (d * h + h * d),
            "moe_layers": len(moe),
            "router_weights": sum(int(np.prod(layer.router_kernel.shape)) for layer in moe),
            # What `dispatch="auto"` resolved to in training, per MoE layer.
            "dispatch": {layer.name: layer.resolved_dispatch(True) for layer in moe}}


def bits_per_character(model, inputs, targets, batch_size=64):
    """Mean of -log2 p(next character) over the real (unpadded) targets."""
    total, count = 0.0, 0
    for start in range(0, len(inputs), batch_size):
        logits = keras.ops.convert_to_numpy(
            model(inputs[start:start + batch_size], training=False)).astype(np.float64)
        target = targets[start:start + batch_size]
        logits -= logits.max(axis=-1, keepdims=True)
        log_p = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
        picked = np.take_along_axis(log_p, target[..., None], axis=-1)[..., 0]
        real = target != PAD
        total -= picked[real].sum()
        count += int(real.sum())
    return total / count / math.log(2), count


def train_one(config, moe, seed, data, vocabulary_size, quick):
    keras.utils.set_random_seed(seed)
    (x_train, y_train), (x_held, y_held) = data
    model = build_language_model(config, vocabulary_size, moe)
    steps = config["epochs"] * int(np.ceil(len(x_train) / config["batch_size"]))
    warmup = max(1, int(config["warmup_fraction"] * steps))
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=steps - warmup, warmup_target=config["learning_rate"], warmup_steps=warmup)
    model.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=config["weight_decay"]),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    usage = ExpertUsage()
    start = time.perf_counter()
    # The padding weight 0 keeps padded targets out of the loss (the mask
    # propagated to the logits does the same; this makes it explicit).
    history = model.fit(x_train, y_train, sample_weight=(y_train != PAD).astype("float32"),
                        epochs=config["epochs"], batch_size=config["batch_size"], shuffle=True,
                        callbacks=[usage] if moe else [], verbose=0 if quick else 2)
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    held_bpc, held_chars = bits_per_character(model, x_held, y_held)
    eval_s = time.perf_counter() - start
    metrics = {"held_out_bpc": held_bpc, "held_out_characters": held_chars,
               "train_loss_last_epoch": float(history.history["loss"][-1])}
    routing = None
    if moe:
        # ExpertUsage zeroes the counters at each epoch's start, so they now
        # hold the last epoch: every real input position once, k slots each.
        real = int((x_train != PAD).sum())
        routing = {layer.name: {"expert_counts": keras.ops.convert_to_numpy(layer.expert_counts),
                                "slots_last_epoch": float(keras.ops.sum(layer.expert_counts)),
                                "real_tokens_per_epoch": real,
                                "padded_tokens_per_epoch": int(x_train.size - real),
                                "top_k": layer.top_k}
                   for layer in moe_keras.usage.moe_layers(model)}
    return model, metrics, {"fit_s": fit_s, "eval_s": eval_s, "steps": steps}, routing, usage.rows


# ## Which characters go where?
#
# `layer.expert_choices` gives each position's experts. We read the MoE
# layer's input (with `Embedding(mask_zero=True)` upstream the layer's node
# has two inputs, the tokens and the propagated mask) and count, over the
# real held-out positions, the characters each expert receives first.


def character_routing(model, inputs, vocabulary, top=8):
    """Per MoE layer and expert: its share of first choices and the
    characters it receives most often (with the share of that character's
    positions it gets)."""
    names = {i: c for c, i in vocabulary.items()}
    names[UNKNOWN] = "<unk>"
    found = {}
    for layer in moe_keras.usage.moe_layers(model):
        feeder = keras.Model(model.input, layer.input)
        counts = np.zeros((len(vocabulary) + 2, layer.num_experts), np.int64)
        for start in range(0, len(inputs), 64):
            batch = inputs[start:start + 64]
            tokens = feeder(batch, training=False)
            if isinstance(tokens, (list, tuple)):
                tokens = tokens[0]
            first = keras.ops.convert_to_numpy(layer.expert_choices(tokens))[..., 0]
            real = batch != PAD
            np.add.at(counts, (batch[real], first[real]), 1)
        per_character = counts / counts.sum(axis=1, keepdims=True).clip(min=1)
        experts = []
        for expert in range(layer.num_experts):
            order = np.argsort(-counts[:, expert])[:top]
            experts.append({
                "share_of_positions": float(counts[:, expert].sum() / counts.sum()),
                "top_characters": [[names.get(int(i), "?"), int(counts[i, expert]),
                                    round(float(per_character[i, expert]), 3)]
                                   for i in order if counts[i, expert]],
            })
        found[layer.name] = experts
    return found


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
        raise SystemExit(f"char_lm_moe.py: no {'quick ' if quick else ''}records in {out}")
    rows = []
    for kind in ("dense", "moe"):
        group = runs.get(kind, [])
        if not group:
            continue
        bpc = [r["metrics"]["held_out_bpc"] for r in group]
        fit = [r["timings"]["fit_s"] for r in group]
        config, params = group[0]["config"], group[0]["params"]
        ffn = (f"MoE {config['top_k']} of {config['num_experts']}, hidden {config['expert_hidden']}"
               if kind == "moe" else f"dense, hidden {config['top_k'] * config['expert_hidden']}")
        rows.append([ffn, len(group), f"{np.median(bpc):.3f} ({min(bpc):.3f}-{max(bpc):.3f})",
                     f"{params['active']:,}", f"{params['total']:,}",
                     f"{np.median(fit):.0f} ({min(fit):.0f}-{max(fit):.0f})"])
    machine, first = group[0]["machine"], group[0]
    header = ["FFN of blocks " + ", ".join(map(str, moe_blocks(config))), "seeds",
              "held-out bits/char, median (range)", "active params", "total params",
              "fit s, median (range)"]
    note = (f"\n\n{first['data']}; context {config['context']}, {config['epochs']} epochs, batch "
            f"{config['batch_size']}; {machine['cpu_count']}-core {machine['processor']} CPU "
            f"({machine['platform']}), accelerator: {machine['accelerator']}; records `{PREFIX}-*.json`.")
    return records.markdown_table(header, rows) + note


# ## Putting it together


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="seconds: 20,000 characters, tiny model, 1 seed")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder of the JSON run records")
    parser.add_argument("--seeds", type=arguments.seed, nargs="+", default=None)
    parser.add_argument("--epochs", type=arguments.at_least_one, default=None)
    parser.add_argument("--table", action="store_true", help="print the Markdown table from the records in --out")
    return parser.parse_args(argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args = parse_args(argv)
    if args.table:
        table = summary_table(args.out, quick=args.quick)
        print(table)
        return table
    config = dict(QUICK if args.quick else FULL)
    if args.seeds is not None:
        config["seeds"] = args.seeds
    if args.epochs is not None:
        config["epochs"] = args.epochs
    train_docs, held_docs = load_corpus(config)
    vocabulary = make_vocabulary(train_docs)
    train = windows(train_docs, vocabulary, config["context"])
    held_out = windows(held_docs, vocabulary, config["context"])
    source = (f"pydoc_data.topics: {sum(map(len, train_docs)):,} training characters in "
              f"{len(train_docs)} topics, {sum(map(len, held_docs)):,} held-out characters in "
              f"{len(held_docs)} topics; {len(vocabulary)} characters + padding + unknown")
    command = ("python examples/char_lm_moe.py " + shlex.join(argv)).strip()
    results = {"records": [], "models": {}, "data": (train, held_out)}
    for seed in config["seeds"]:
        for kind in ("dense", "moe"):
            started = time.perf_counter()
            model, metrics, timings, routing, usage_rows = train_one(
                config, kind == "moe", seed, (train, held_out), len(vocabulary) + 2, args.quick)
            timings["total_s"] = time.perf_counter() - started
            record = {
                "example": PREFIX, "model": kind, "seed": seed, "quick": args.quick,
                "command": command, "config": config, "data": source,
                "versions": records.library_versions(), "machine": records.machine_description(),
                "metrics": metrics, "params": parameter_counts(model, config), "timings": timings,
            }
            if routing is not None:
                record["routing"] = routing
                record["training_load"] = usage_rows
                record["held_out_character_routing"] = character_routing(model, held_out[0], vocabulary)
            path = Path(args.out) / record_name(kind, seed, args.quick)
            records.write_json_atomically(path, record)
            results["records"].append(path)
            if args.quick:
                results["models"][(kind, seed)] = model
            print(f"{kind:5s} seed {seed}: held-out {metrics['held_out_bpc']:.3f} bits/char, "
                  f"fit {timings['fit_s']:.0f} s -> {path}")
            if not args.quick:
                keras.backend.clear_session()
    print(summary_table(args.out, quick=args.quick))
    return results


if __name__ == "__main__":
    main()
