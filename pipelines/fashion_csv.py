"""Fashion-MNIST as competition-size digit-recognizer CSVs.

    python -m pipelines.fashion_csv --out data/fashion-digit-recognizer
    python -m pipelines.fashion_csv --out /tmp/fashion-quick --quick

Kaggle's digit-recognizer has 42,000 labelled training rows and 28,000 test
rows; the only 70,000-image set of 28 x 28 greyscale images in this format
on the machine is Fashion-MNIST (Debian package ``dataset-fashion-mnist``,
gzipped idx files under /usr/share/datasets/fashion-mnist). Its 60,000
training and 10,000 test images are pooled and split, stratified by class
with a fixed seed, into

* ``train.csv``: ``label,pixel0,...,pixel783``, 42,000 rows,
* ``test.csv``: ``pixel0,...,pixel783``, 28,000 rows (the rest of the pool),
* ``test_labels.csv``: ``ImageId,Label``, the held-out truth of test.csv,
* ``sample_submission.csv``: ``ImageId,Label`` with every label 0,
* ``fashion_csv.json``: what was written (seed, source, class counts,
  file hashes), written last.

``test_labels.csv`` beside ``test.csv`` is the convention of
`pipelines.data` (the embedded MNIST sample keeps its held-out labels the
same way): the pipeline picks it up and reports a local test accuracy, and
never reads it for training. Every file is written atomically
(`pipelines.records.write_text_atomically`). Labels are Fashion-MNIST's
classes 0..9 (`CLASS_NAMES`), not digits.

``--quick`` writes 300 training and 200 test rows (for tests).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import platform
import sys
from pathlib import Path

import numpy as np

DEFAULT_SOURCE = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_OUT = Path("data/fashion-digit-recognizer")
PACKAGE = "dataset-fashion-mnist"
TRAIN_ROWS, TEST_ROWS = 42_000, 28_000
QUICK_TRAIN_ROWS, QUICK_TEST_ROWS = 300, 200
MANIFEST_NAME = "fashion_csv.json"
CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
# (images, labels) of Fashion-MNIST's two splits, pooled in this order.
IDX_FILES = (
    ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
)
IMAGE_SIDE = 28
PIXEL_COLUMNS = tuple(f"pixel{index}" for index in range(IMAGE_SIDE * IMAGE_SIDE))
# idx magic numbers: unsigned bytes with 3 (images) or 1 (labels) dimensions.
_IMAGES_MAGIC, _LABELS_MAGIC = 0x00000803, 0x00000801
# The text of each byte value, so rows are joined without formatting.
_CELL_TEXT = tuple(str(value) for value in range(256))


class SourceError(RuntimeError):
    """The idx files are missing or not what they should be."""


def read_idx(path: Path, dimensions: int) -> np.ndarray:
    """An idx file of unsigned bytes (plain, or ``path`` + ``.gz``) as an
    array: (N, 784) for 28 x 28 images, (N,) for labels.

    Raises:
        SourceError: if neither file exists or the header does not match.
    """
    path = Path(path)
    packed = path.with_name(path.name + ".gz")
    try:
        if path.is_file():
            raw = path.read_bytes()
        elif packed.is_file():
            with gzip.open(packed, "rb") as handle:
                raw = handle.read()
        else:
            raise SourceError(
                f"{path} not found (nor {packed.name}); install Fashion-MNIST with "
                f"`apt-get install -y {PACKAGE}` (after `apt-get update`) or pass --source DIR"
            )
    except (OSError, EOFError) as error:
        raise SourceError(f"cannot read {packed if not path.is_file() else path}: {error}") from error
    header = 4 + 4 * dimensions
    if len(raw) < header:
        raise SourceError(f"{path}: {len(raw)} bytes, too short for an idx header")
    magic, *shape = (int.from_bytes(raw[i : i + 4], "big") for i in range(0, header, 4))
    expected = _IMAGES_MAGIC if dimensions == 3 else _LABELS_MAGIC
    if magic != expected or (dimensions == 3 and shape[1:] != [IMAGE_SIDE, IMAGE_SIDE]):
        raise SourceError(f"{path}: idx header {magic:#010x} {shape} is not {dimensions}-D unsigned bytes"
                          + (" of 28 x 28 images" if dimensions == 3 else ""))
    values = np.frombuffer(raw, dtype=np.uint8, offset=header)
    if values.size != int(np.prod(shape)):
        raise SourceError(f"{path}: {values.size} bytes of data, the header says {int(np.prod(shape))}")
    return values.reshape(shape[0], -1) if dimensions == 3 else values


def load_pool(source: Path = DEFAULT_SOURCE) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST's training then test images as one pool:
    ((N, 784) uint8 pixels, (N,) int64 labels)."""
    images, labels = [], []
    for images_name, labels_name in IDX_FILES:
        split_images = read_idx(Path(source) / images_name, 3)
        split_labels = read_idx(Path(source) / labels_name, 1)
        if len(split_images) != len(split_labels):
            raise SourceError(
                f"{source}: {images_name} has {len(split_images)} images, {labels_name} {len(split_labels)} labels"
            )
        if split_labels.size and split_labels.max() > 9:
            raise SourceError(f"{source / labels_name}: label {split_labels.max()}, expected 0..9")
        images.append(split_images)
        labels.append(split_labels.astype(np.int64))
    return np.concatenate(images), np.concatenate(labels)


def split_pool(labels: np.ndarray, train_rows: int, test_rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint pool indices ``(train, test)``, each stratified by class and in
    shuffled order (file order carries no signal), from `seed` alone."""
    from sklearn.model_selection import train_test_split

    if train_rows < 10 or test_rows < 10:
        raise ValueError(f"need at least 10 rows per file (one per class); got {train_rows} and {test_rows}")
    if train_rows + test_rows > len(labels):
        raise ValueError(f"{train_rows} + {test_rows} rows asked of a pool of {len(labels)}")
    index = np.arange(len(labels))
    train, test = train_test_split(
        index, train_size=train_rows, test_size=test_rows, stratify=labels, random_state=seed
    )
    return np.asarray(train), np.asarray(test)


def csv_text(header: tuple[str, ...] | list[str], values: np.ndarray) -> str:
    """CSV text (header line, one line per row, ``\\n`` endings) of a 2-D
    array of integers 0..255."""
    values = np.asarray(values)
    if values.ndim != 2 or values.size and (values.min() < 0 or values.max() > 255):
        raise ValueError("csv_text writes a 2-D array of integers 0..255")
    cell = _CELL_TEXT.__getitem__
    lines = [",".join(header)]
    lines.extend(",".join(map(cell, row)) for row in values.tolist())
    lines.append("")
    return "\n".join(lines)


def _submission_text(labels: np.ndarray) -> str:
    rows = (f"{image_id},{label}" for image_id, label in enumerate(labels.tolist(), start=1))
    return "\n".join(["ImageId,Label", *rows, ""])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_competition_csvs(
    out: Path,
    source: Path = DEFAULT_SOURCE,
    train_rows: int = TRAIN_ROWS,
    test_rows: int = TEST_ROWS,
    seed: int = 0,
    command: list[str] | None = None,
) -> dict:
    """Writes the Kaggle-layout CSVs (see the module docstring) into `out`.

    Returns:
        The manifest, also written to ``out/fashion_csv.json``.

    Raises:
        SourceError: the idx files are missing or malformed.
        ValueError: the row counts do not fit the pool.
    """
    # Local imports: `--help` and a missing source answer before pandas and
    # sklearn load.
    from pipelines import records
    from pipelines.data import _EMBEDDED_MARKER_NAME

    images, labels = load_pool(source)
    train, test = split_pool(labels, train_rows, test_rows, seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # A marker of the embedded MNIST sample would label these files "embedded".
    (out / _EMBEDDED_MARKER_NAME).unlink(missing_ok=True)
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    files = {
        "test_labels.csv": lambda: _submission_text(labels[test]),
        "sample_submission.csv": lambda: _submission_text(np.zeros(len(test), dtype=np.int64)),
        "test.csv": lambda: csv_text(PIXEL_COLUMNS, images[test]),
        "train.csv": lambda: csv_text(("label", *PIXEL_COLUMNS), np.column_stack([labels[train], images[train]])),
    }
    # The labels first and train.csv last: the pipeline only takes the
    # directory once both CSVs exist, and then the held-out labels are there.
    for name, text in files.items():
        records.write_text_atomically(out / name, text())
    train_images = images[train].view(np.dtype((np.void, images.shape[1]))).ravel()
    test_images = images[test].view(np.dtype((np.void, images.shape[1]))).ravel()
    import sklearn

    manifest = {
        "command": list(sys.argv if command is None else command),
        "dataset": "Fashion-MNIST (Xiao, Rasul and Vollgraf 2017), train and t10k pooled",
        "source": str(source),
        "pool_rows": int(len(labels)),
        "seed": seed,
        "split": "sklearn.model_selection.train_test_split(stratify=labels, random_state=seed) of pool indices",
        "train_rows": int(len(train)),
        "test_rows": int(len(test)),
        "train_class_counts": np.bincount(labels[train], minlength=10).tolist(),
        "test_class_counts": np.bincount(labels[test], minlength=10).tolist(),
        "class_names": list(CLASS_NAMES),
        "train_from_t10k": int((train >= len(labels) - 10_000).sum()) if len(labels) == 70_000 else None,
        "test_images_also_in_train": int(np.isin(test_images, train_images).sum()),
        "files": {name: {"bytes": (out / name).stat().st_size, "sha256": _sha256(out / name)} for name in files},
        "versions": {"python": platform.python_version(), "numpy": np.__version__, "sklearn": sklearn.__version__},
    }
    records.write_json_atomically(out / MANIFEST_NAME, manifest)
    return manifest


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.fashion_csv",
        description="Write Fashion-MNIST as Kaggle digit-recognizer CSVs (42,000 train / 28,000 test, "
        "stratified, held-out labels in test_labels.csv).",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help=f"idx files, plain or .gz (default {DEFAULT_SOURCE})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the stratified split (default 0)")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_TRAIN_ROWS} train / {QUICK_TEST_ROWS} test rows")
    parser.add_argument("--train-rows", type=int, help=f"default {TRAIN_ROWS:,} ({QUICK_TRAIN_ROWS} with --quick)")
    parser.add_argument("--test-rows", type=int, help=f"default {TEST_ROWS:,} ({QUICK_TEST_ROWS} with --quick)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # `is None`: --train-rows 0 is an error below, not the 42,000-row default.
    train_rows = args.train_rows if args.train_rows is not None else (QUICK_TRAIN_ROWS if args.quick else TRAIN_ROWS)
    test_rows = args.test_rows if args.test_rows is not None else (QUICK_TEST_ROWS if args.quick else TEST_ROWS)
    try:
        manifest = write_competition_csvs(
            args.out, args.source, train_rows, test_rows, args.seed,
            command=["python", "-m", "pipelines.fashion_csv", *(sys.argv[1:] if argv is None else argv)],
        )
    except (SourceError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # --out is a file, or not writable
        print(f"error: cannot write to {args.out}: {error}", file=sys.stderr)
        return 2
    sizes = ", ".join(f"{name} {info['bytes'] / 1e6:.1f} MB" for name, info in manifest["files"].items())
    print(f"wrote {manifest['train_rows']:,} train / {manifest['test_rows']:,} test rows of Fashion-MNIST "
          f"(seed {args.seed}) to {args.out}: {sizes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
