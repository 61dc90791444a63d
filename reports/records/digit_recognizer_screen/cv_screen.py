"""Cross-validated screen of recipe variants of the digit-recognizer default
on the 4,000 training digits only (it never reads the held-out labels).

Each fold of a stratified 4-fold split validates on 1,000 digits (4x the
pipeline's own 400-image split, so a variant's mean over the folds moves by
0.025 pp per digit), and early stopping watches that fold. Writes one JSON
line per run: `python cv_screen.py ARM FOLD OUT.jsonl` from the repository
root, with `data/digit-recognizer/train.csv` the embedded default's.
"""
import json
import platform
import sys
import time

import keras
import numpy as np
from sklearn.model_selection import StratifiedKFold

from pipelines import data, ensemble, train
from pipelines.models import ModelConfig
from pipelines.train import TrainConfig

FOLDS = 4
ARMS = {
    "base": (dict(), dict()),
    "deep": (dict(trunk="deep"), dict()),
    "deep24": (dict(trunk="deep"), dict(epochs=24)),
    # The default of commit c619839.
    "pool40b64": (dict(trunk="pool"), dict(epochs=40, batch_size=64, learning_rate=2e-3)),
    "pool": (dict(trunk="pool"), dict()),
    "epochs48": (dict(), dict(epochs=48)),
}


def run(arm, fold, out):
    model_options, train_options = ARMS[arm]
    images, labels = data.read_train_csv("data/digit-recognizer/train.csv")
    splits = StratifiedKFold(FOLDS, shuffle=True, random_state=0).split(images, labels)
    train_rows, val_rows = list(splits)[fold]
    model_config = ModelConfig(**model_options)
    train_config = TrainConfig(seed=fold, verbose=0, **train_options)
    start = time.perf_counter()
    result = train.fit(model_config, train_config, images[train_rows], labels[train_rows],
                       images[val_rows], labels[val_rows])
    wall = time.perf_counter() - start
    views = ensemble.predict_views(
        lambda x: result.model.predict(x, batch_size=512, verbose=0), images[val_rows])
    probs, probs_tta = views[0], views.mean(0)
    y_val = labels[val_rows]
    record = dict(
        arm=arm, fold=fold, seed=fold, model=model_config.name, train_options=train_options,
        val_acc=float((probs.argmax(1) == y_val).mean()),
        val_acc_tta=float((probs_tta.argmax(1) == y_val).mean()),
        val_nll=float(-np.log(probs[np.arange(len(y_val)), y_val] + 1e-12).mean()),
        wall_s=round(wall, 1), epochs=len(result.epoch_seconds),
        epoch_s=[round(s, 2) for s in result.epoch_seconds],
        errors=val_rows[probs.argmax(1) != y_val].tolist(),
        keras=keras.__version__, machine=platform.machine(),
    )
    with open(out, "a") as f:
        f.write(json.dumps(record) + "\n")
    print(arm, fold, record["val_acc"], record["wall_s"], flush=True)


if __name__ == "__main__":
    run(sys.argv[1], int(sys.argv[2]), sys.argv[3])
