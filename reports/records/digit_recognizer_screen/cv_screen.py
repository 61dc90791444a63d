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
    # Train, label the fold's images the model gives at least 0.99, train a
    # fresh model on both (the pipeline's `--pseudo-label`, with the fold in
    # the role of test.csv).
    "pseudo": (dict(), dict(pseudo_label=0.99)),
    # Decoupled weight decay (Keras's optimizers take `weight_decay`).
    "wd05": (dict(), dict()),
    # Simard et al.'s elastic distortion (alpha 34, sigma 4) after the
    # rotation, shift and zoom (`--elastic 34`); with 48 epochs, since a
    # stronger augmentation may need longer to fit; and a third of it.
    "elastic": (dict(elastic=34.0), dict()),
    "elastic48": (dict(elastic=34.0), dict(epochs=48)),
    "elastic12": (dict(elastic=12.0), dict()),
    # The default again at a later commit (the MoE head on the dropless
    # engine, test-time augmentation), the control of the arms after it.
    "default": (dict(), dict()),
    # Polyak averaging of the weights (`TrainConfig.ema`): Adam's moving
    # average over about 100 and 200 steps (4 and 8 epochs of 24 steps).
    "ema99": (dict(), dict(ema=0.99)),
    "ema995": (dict(), dict(ema=0.995)),
}
OPTIMIZER_OPTIONS = {"wd05": dict(weight_decay=0.05)}


def run(arm, fold, out):
    model_options, train_options = ARMS[arm]
    images, labels = data.read_train_csv("data/digit-recognizer/train.csv")
    splits = StratifiedKFold(FOLDS, shuffle=True, random_state=0).split(images, labels)
    train_rows, val_rows = list(splits)[fold]
    model_config = ModelConfig(**model_options)
    train_config = TrainConfig(seed=fold, verbose=0, **train_options)
    if arm in OPTIMIZER_OPTIONS:
        adam = keras.optimizers.Adam
        keras.optimizers.Adam = lambda *a, **k: adam(*a, **k, **OPTIMIZER_OPTIONS[arm])
    x_train, y_train = images[train_rows], labels[train_rows]
    start = time.perf_counter()
    result = train.fit(model_config, train_config, x_train, y_train,
                       images[val_rows], labels[val_rows])
    pseudo_images = None
    if train_config.pseudo_label is not None:
        first = result.model.predict(images[val_rows], batch_size=512, verbose=0)
        index, guessed = ensemble.pseudo_labels(first, train_config.pseudo_label)
        pseudo_images = dict(count=int(len(index)),
                             wrong=int((guessed != labels[val_rows][index]).sum()),
                             first_val_acc=float((first.argmax(1) == labels[val_rows]).mean()))
        result = train.fit(model_config, train_config,
                           np.concatenate([x_train, images[val_rows][index]]),
                           np.concatenate([y_train, guessed]).astype(y_train.dtype),
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
    if pseudo_images is not None:
        record["pseudo_images"] = pseudo_images
    if arm in OPTIMIZER_OPTIONS:
        record["optimizer_options"] = OPTIMIZER_OPTIONS[arm]
    with open(out, "a") as f:
        f.write(json.dumps(record) + "\n")
    print(arm, fold, record["val_acc"], record["wall_s"], flush=True)


if __name__ == "__main__":
    run(sys.argv[1], int(sys.argv[2]), sys.argv[3])
