"""Cross-validated screen of how the grid's members are split and seeded, on
the 4,000 training digits only (it never reads the held-out labels).

For fold f of the cross-validated screen's stratified 4-fold split, the six
grid models train on the fold's 3,000 digits as the pipeline trains them
(a stratified 90/10 split of those for early stopping), and their mean
softmax is scored on the fold's 1,000 digits:

* `shared`: every member with seed f, so one validation split, one
  shuffle order, one set of layer seeds (what `--grid` does);
* `bagged`: member i with seed f + 4 i, so each its own split and draws
  (what `--ensemble` does for seeds of one config).

Writes one JSON line per (arm, fold): `python cv_grid_ensemble.py ARM FOLD
OUT.jsonl` from the repository root, with `data/digit-recognizer/train.csv`
the embedded default's.
"""
import json
import platform
import sys
import time
from dataclasses import replace

import keras
import numpy as np
from sklearn.model_selection import StratifiedKFold

from pipelines import data, train
from pipelines.cli import GRID
from pipelines.models import ModelConfig
from pipelines.train import TrainConfig

FOLDS = 4
ARMS = ("shared", "bagged")


def member_seed(arm, fold, member):
    return fold if arm == "shared" else fold + FOLDS * member


def run(arm, fold, out):
    images, labels = data.read_train_csv("data/digit-recognizer/train.csv")
    splits = StratifiedKFold(FOLDS, shuffle=True, random_state=0).split(images, labels)
    fold_rows, scored_rows = list(splits)[fold]
    y_scored = labels[scored_rows]
    members, probabilities = [], []
    start = time.perf_counter()
    for index, (moe, hidden) in enumerate(GRID):
        model_config = replace(ModelConfig(), moe=moe, hidden=hidden)
        train_config = TrainConfig(seed=member_seed(arm, fold, index), verbose=0)
        fit_rows, y_fit, stop_rows, y_stop = data.train_validation_split(
            fold_rows, labels[fold_rows], train_config.validation_fraction, train_config.seed
        )
        result = train.fit(model_config, train_config, images[fit_rows], y_fit,
                           images[stop_rows], y_stop)
        probs = result.model.predict(images[scored_rows], batch_size=512, verbose=0)
        probabilities.append(probs)
        members.append(dict(model=model_config.name, seed=train_config.seed,
                            acc=float((probs.argmax(1) == y_scored).mean()),
                            epochs=len(result.epoch_seconds)))
    wall = time.perf_counter() - start
    mean = np.mean(probabilities, axis=0)
    record = dict(
        arm=arm, fold=fold, members=members,
        val_acc=float((mean.argmax(1) == y_scored).mean()),
        val_nll=float(-np.log(mean[np.arange(len(y_scored)), y_scored] + 1e-12).mean()),
        errors=scored_rows[mean.argmax(1) != y_scored].tolist(),
        wall_s=round(wall, 1), keras=keras.__version__, machine=platform.machine(),
    )
    with open(out, "a") as f:
        f.write(json.dumps(record) + "\n")
    print(arm, fold, record["val_acc"], [m["acc"] for m in members], record["wall_s"], flush=True)


if __name__ == "__main__":
    run(sys.argv[1], int(sys.argv[2]), sys.argv[3])
