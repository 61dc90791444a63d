"""Validation-only screen of recipe variants of the digit-recognizer default
(MoE(3,5) h64); it never reads the held-out labels. Writes one JSON line per
run: `python screen.py ARM SEED OUT.jsonl` from the repository root.
screen.json holds the runs of commit 25d121c's code."""
import json
import sys
import time

import keras
import numpy as np

from pipelines import data, models, train
from pipelines.models import ModelConfig
from pipelines.train import TrainConfig

# As run: "base" was the default then (batch 64, Adam 2e-3, rotation 0.05).
OLD = {"batch_size": 64, "learning_rate": 2e-3}
ARMS = {
    "base": dict(OLD),
    "b128": {"batch_size": 128, "learning_rate": 3e-3},
    "rot10": {**OLD, "rotation": 10 / 360},
    "ls01": {**OLD, "label_smoothing": 0.1},
    "b128rot10": {"batch_size": 128, "learning_rate": 3e-3, "rotation": 10 / 360},
    "b128rot10ls": {"batch_size": 128, "learning_rate": 3e-3, "rotation": 10 / 360, "label_smoothing": 0.1},
}

def run(arm, seed, out):
    opts = dict(ARMS[arm])
    rotation = opts.pop("rotation", None)
    smoothing = opts.pop("label_smoothing", None)
    orig_aug = models._augmentation
    if rotation is not None:
        def aug(seeds):
            seq = orig_aug(seeds)
            seq.layers[0].factor = (-rotation, rotation)
            seq.layers[0].lower, seq.layers[0].upper = -rotation, rotation
            return seq
        models._augmentation = aug
    orig_compiled = train.compiled_model
    if smoothing is not None:
        def compiled(mc, tc, spe):
            m = orig_compiled(mc, tc, spe)
            def loss(y, p):
                y1 = keras.ops.one_hot(keras.ops.cast(keras.ops.reshape(y, (-1,)), "int32"), 10)
                return keras.losses.categorical_crossentropy(y1, p, label_smoothing=smoothing)
            m.compile(optimizer=m.optimizer, loss=loss, metrics=["accuracy"], jit_compile=tc.jit_compile,
                      steps_per_execution=m.steps_per_execution)
            return m
        train.compiled_model = compiled
    images, labels = data.read_train_csv("data/digit-recognizer/train.csv")
    tc = TrainConfig(seed=seed, verbose=0, **opts)
    xi, y_train, vi, y_val = data.train_validation_split(np.arange(len(images)), labels, tc.validation_fraction, seed)
    t0 = time.perf_counter()
    res = train.fit(ModelConfig(), tc, images[xi], y_train, images[vi], y_val)
    wall = time.perf_counter() - t0
    p = res.model.predict(images[vi], batch_size=512, verbose=0)
    acc = float((p.argmax(1) == y_val).mean())
    nll = float(-np.log(p[np.arange(len(y_val)), y_val] + 1e-12).mean())
    rec = dict(arm=arm, seed=seed, val_acc=acc, val_nll=nll, wall=wall, epochs=len(res.epoch_seconds),
               epoch_s=[round(s, 2) for s in res.epoch_seconds], errors=np.flatnonzero(p.argmax(1) != y_val).tolist())
    with open(out, "a") as f:
        f.write(json.dumps(rec) + "\n")
    print(arm, seed, acc, round(wall, 1), flush=True)

if __name__ == "__main__":
    arm, seed, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    run(arm, seed, out)
