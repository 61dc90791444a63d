"""Ensembles, test-time augmentation and pseudo-labels for the digit
recognizer, on saved class probabilities.

Every training run keeps its predictions beside its run record
(`<run>.json` -> `<run>.probs.npz`, see `save_probabilities`), so an
ensemble is a mean over those files and can be rebuilt without retraining
(`python -m pipelines.digit_recognizer ensemble RUN_JSON...`).

NumPy only (no Keras): the `ensemble` command starts without TensorFlow.
"""

import io
import json
import sys
import time
from pathlib import Path

import numpy as np

from pipelines import data
from pipelines import records

NUM_CLASSES = 10
PROBABILITIES_SUFFIX = ".probs.npz"

# Test-time augmentation: the image itself (first), then one-pixel shifts
# down, up, right and left, as (rows, columns).
TTA_SHIFTS = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))


# Averaging ---------------------------------------------------------------------


def average_probabilities(members):
    """The mean of the members' class probabilities, in float64.

    Args:
        members: a sequence of arrays of one shape `(rows, classes)`.

    Raises:
        ValueError: no members, or members of different shapes.
    """
    members = [np.asarray(m, dtype=np.float64) for m in members]
    if not members:
        raise ValueError("An ensemble needs at least one member.")
    shapes = {m.shape for m in members}
    if len(shapes) != 1 or members[0].ndim != 2:
        raise ValueError(
            "Ensemble members must each give one (rows, classes) array of the same "
            f"shape; got shapes {[m.shape for m in members]}."
        )
    return np.mean(members, axis=0)


def labels_of(probabilities):
    """Predicted labels: the most probable class (the lowest on a tie), int32."""
    return np.asarray(probabilities).argmax(axis=-1).astype(np.int32)


def accuracy(probabilities, truth):
    """Share of rows whose most probable class is `truth`."""
    return float((labels_of(probabilities) == np.asarray(truth)).mean())


def out_of_bag(members):
    """Validation probabilities of bagged members, averaged per training row.

    Each member holds out its own validation rows (their indices into
    train.csv). A row's out-of-bag probability is the mean over the members
    that held it out, so no member judges a row it trained on.

    Args:
        members: `(index, probabilities, labels)` triples, one per member.

    Returns:
        `(index, probabilities, labels)` over every row some member held out,
        sorted by index.

    Raises:
        ValueError: two members disagree about a row's label.
    """
    sums, counts, truth = {}, {}, {}
    for index, probabilities, labels in members:
        for row, p, label in zip(np.asarray(index).tolist(), np.asarray(probabilities, np.float64),
                                 np.asarray(labels).tolist()):
            if truth.setdefault(row, label) != label:
                raise ValueError(f"Members disagree about the label of training row {row}.")
            sums[row] = sums.get(row, 0.0) + p
            counts[row] = counts.get(row, 0) + 1
    rows = sorted(sums)
    probabilities = np.array([sums[r] / counts[r] for r in rows]).reshape(len(rows), -1)
    return np.array(rows, dtype=np.int64), probabilities, np.array([truth[r] for r in rows], np.int32)


# Test-time augmentation --------------------------------------------------------


def shift_images(images, rows, columns):
    """Images moved by `rows` down and `columns` right (negative: up, left);
    pixels moved in from outside are 0. Shape `(n, height, width, channels)`."""
    images = np.asarray(images)
    shifted = np.zeros_like(images)
    height, width = images.shape[1:3]
    if abs(rows) >= height or abs(columns) >= width:
        return shifted

    def spans(offset, size):
        # (target slice, source slice) along one axis.
        if offset >= 0:
            return slice(offset, size), slice(0, size - offset)
        return slice(0, size + offset), slice(-offset, size)

    (row_to, row_from), (col_to, col_from) = spans(rows, height), spans(columns, width)
    shifted[:, row_to, col_to] = images[:, row_from, col_from]
    return shifted


def predict_views(predict, images, shifts=TTA_SHIFTS):
    """`predict` of each shifted copy of `images`: shape `(views, rows, classes)`.

    Args:
        predict: a function from images to class probabilities (e.g. a
            Keras model's `predict`, bound to its batch size).
        shifts: `(rows, columns)` shifts, one view each.
    """
    return np.stack([np.asarray(predict(shift_images(images, dy, dx))) for dy, dx in shifts])


def predict_probabilities(predict, images, tta=False):
    """Class probabilities of `images`; with `tta`, the mean softmax over the
    image and its one-pixel shifts (`TTA_SHIFTS`)."""
    if not tta:
        return np.asarray(predict(images))
    return predict_views(predict, images).mean(axis=0)


# Pseudo-labels -----------------------------------------------------------------


def pseudo_labels(probabilities, threshold):
    """The confident rows and their labels.

    Args:
        probabilities: `(rows, classes)` class probabilities (of test images,
            whose labels the run never sees).
        threshold: a row is labelled when its top probability is at least
            this, in (0, 1].

    Returns:
        `(index, labels)`: int64 row indices (ascending) and int32 labels.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"The pseudo-label threshold must be in (0, 1]; got {threshold}.")
    probabilities = np.asarray(probabilities)
    index = np.flatnonzero(probabilities.max(axis=-1) >= threshold).astype(np.int64)
    return index, labels_of(probabilities[index])


# Saved probabilities -----------------------------------------------------------


def probabilities_path(record_path):
    """Where the probabilities of the run recorded at `record_path` live:
    `run.json` -> `run.probs.npz`."""
    return Path(record_path).with_suffix(PROBABILITIES_SUFFIX)


def save_probabilities(path, test, validation, validation_index, validation_labels):
    """Writes a run's predictions, compressed, atomically.

    The npz holds `test` (test rows x 10, float16, test.csv order),
    `validation` (validation rows x 10, float16), `validation_index` (int64:
    each validation row's 0-based row in train.csv) and `validation_labels`
    (int8: their labels, from train.csv).
    """
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        test=np.asarray(test, dtype=np.float16),
        validation=np.asarray(validation, dtype=np.float16),
        validation_index=np.asarray(validation_index, dtype=np.int64),
        validation_labels=np.asarray(validation_labels, dtype=np.int8),
    )
    records.write_bytes_atomically(path, buffer.getvalue())
    return Path(path)


def load_probabilities(path):
    """The arrays `save_probabilities` wrote, as a dict (float32 probabilities)."""
    with np.load(path, allow_pickle=False) as saved:
        arrays = {name: saved[name] for name in saved.files}
    missing = {"test", "validation", "validation_index", "validation_labels"} - set(arrays)
    if missing:
        raise ValueError(f"{path}: not a run's probabilities file (missing {sorted(missing)}).")
    for name in ("test", "validation"):
        arrays[name] = arrays[name].astype(np.float32)
    return arrays


# Ensembles of recorded runs ----------------------------------------------------


def load_member(record_path):
    """`(record, probabilities)` of one recorded run; the npz is looked up
    beside the record, then at the path the record names."""
    record_path = Path(record_path)
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{record_path}: cannot read the run record ({error}).") from None
    if not isinstance(record, dict) or record.get("status") != "complete":
        raise ValueError(f"{record_path}: not the record of a complete run.")
    candidates = [probabilities_path(record_path)]
    if record.get("probabilities"):
        candidates.append(Path(record["probabilities"]))
    for candidate in candidates:
        if candidate.exists():
            return record, load_probabilities(candidate)
    raise ValueError(
        f"{record_path}: no saved probabilities ({candidates[0]}); the run predates "
        "them or they were deleted. Retrain it to include it in an ensemble."
    )


def build_ensemble(record_paths, submission_path, log=print):
    """Averages the test probabilities of recorded runs into one submission.

    Writes, each atomically, the submission CSV, its probabilities
    (`<stem>.probs.npz`: the mean test probabilities, and the out-of-bag
    validation probabilities) and an ensemble record (`<stem>.json`) with the
    members, the held-out test accuracy (when the members' data came with
    held-out labels) and the out-of-bag validation accuracy. A Kaggle score
    kept in an earlier record at the same place is kept when the new
    submission has the same bytes (a grid that resumes rebuilds its
    ensemble, and need not upload it again).

    Returns:
        The ensemble record (a dict).
    """
    start = time.perf_counter()
    record_paths = [Path(p) for p in record_paths]
    submission_path = Path(submission_path)
    record_path = submission_path.with_suffix(".json")
    if record_path.resolve() in {p.resolve() for p in record_paths}:
        # Its record and probabilities would replace the member's own.
        raise ValueError(
            f"The ensemble's record {record_path} would overwrite one of its members; give the "
            "ensemble a submission name of its own."
        )
    loaded = [load_member(p) for p in record_paths]
    rows = {r["data"]["test_rows"] for r, _ in loaded}
    tests = {r["data"].get("test_csv") for r, _ in loaded}
    if len(rows) != 1:
        raise ValueError(f"Ensemble members predicted different test sets: test rows {sorted(rows)}.")
    if len(tests) != 1:
        log(f"warning: ensemble members name different test.csv files: {sorted(map(str, tests))}")
    test = average_probabilities([p["test"] for _, p in loaded])
    try:
        oob_index, oob, oob_labels = out_of_bag(
            [(p["validation_index"], p["validation"], p["validation_labels"]) for _, p in loaded]
        )
    except ValueError as error:
        trains = sorted({str(r["data"].get("train_csv")) for r, _ in loaded})
        if len(trains) < 2:
            raise
        raise ValueError(
            f"{error} The members were trained on different train.csv files ({', '.join(trains)}); "
            "an ensemble averages runs on the same data."
        ) from None
    predictions = labels_of(test)
    previous = _previous_submission(record_path, submission_path)
    data.write_submission(submission_path, predictions)
    first = loaded[0][0]["data"]
    test_accuracy = None
    labels_csv = first.get("test_labels_csv")
    if labels_csv and Path(labels_csv).exists():
        test_accuracy = float((predictions == data.read_test_labels(labels_csv)).mean())
    npz_path = probabilities_path(record_path)
    save_probabilities(npz_path, test, oob, oob_index, oob_labels)
    record = {
        "kind": "ensemble",
        "status": "complete",
        "name": submission_path.stem,
        "submission": str(submission_path),
        "record": str(record_path),
        "probabilities": str(npz_path),
        "method": "mean of the members' softmax outputs",
        "members": [str(p) for p in record_paths],
        "member_names": [r["name"] for r, _ in loaded],
        "member_seeds": [r.get("seed") for r, _ in loaded],
        "member_test_accuracy": [r.get("test_accuracy") for r, _ in loaded],
        "member_validation_accuracy": [r.get("validation_accuracy") for r, _ in loaded],
        "test_accuracy": test_accuracy,
        "validation_accuracy": accuracy(oob, oob_labels) if len(oob_index) else None,
        "validation_rows": int(len(oob_index)),
        "params_total": sum(r.get("params_total", 0) for r, _ in loaded),
        "params_active": sum(r.get("params_active", 0) for r, _ in loaded),
        "members_wall_time_s": round(sum(r.get("wall_time_s", 0) for r, _ in loaded), 2),
        "command": list(sys.argv),
        "data": {k: first.get(k) for k in ("origin", "train_csv", "test_csv", "test_labels_csv", "test_rows")},
        "wall_time_s": round(time.perf_counter() - start, 2),
    }
    if previous is not None and previous[1] == submission_path.read_bytes():
        record["kaggle"] = previous[0]
    records.write_json_atomically(record_path, record)
    for line in summary_lines(record):
        log(line)
    return record


def _previous_submission(record_path, submission_path):
    """`(kaggle result, submission bytes)` of an earlier scored file, or None."""
    try:
        kept = json.loads(Path(record_path).read_text()).get("kaggle")
        return (kept, Path(submission_path).read_bytes()) if kept else None
    except (OSError, ValueError, AttributeError):
        return None


def summary_lines(record):
    """The end-of-ensemble summary."""
    lines = ["", f"ensemble       {record['name']}: mean of {len(record['members'])} runs"]
    for name, seed, val, test in zip(record["member_names"], record["member_seeds"],
                                     record["member_validation_accuracy"], record["member_test_accuracy"]):
        line = f"  member       {name} seed={seed} validation {val:.4f}"
        lines.append(line + ("" if test is None else f"  held-out test {test:.4f}"))
    accuracy_line = "accuracy      "
    if record["validation_accuracy"] is not None:
        accuracy_line += f" out-of-bag validation {record['validation_accuracy']:.4f} ({record['validation_rows']} rows)"
    if record["test_accuracy"] is not None:
        accuracy_line += f"  held-out test {record['test_accuracy']:.4f}"
    lines += [accuracy_line, f"submission     {record['submission']}", f"run record     {record['record']}"]
    return lines
