"""Datasets of the MoE study, as flat float32 pixel vectors in [0, 1].

Every loader returns a `Dataset` with a training part (from which the runner
carves a stratified validation split) and a separate test part that is only
ever used for the reported number, never for model selection.
"""

from __future__ import annotations

import gzip
import pickle
import shutil
import struct
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mlxtend.data import loadlocal_mnist
from sklearn.model_selection import train_test_split

from pipelines import data

DEFAULT_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_CIFAR_DIR = Path.home() / ".keras" / "datasets" / "cifar-10-batches-py"
DATASET_NAMES = ("digits", "fashion", "cifar10")
# (images, labels) idx file names of the training and test splits.
IDX_SPLITS = (
    ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
)


class DatasetUnavailable(RuntimeError):
    """Raised when a dataset's files are not on this machine."""


@dataclass
class Dataset:
    """Train/test arrays plus a one-line description for the report."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    description: str

    @property
    def features(self) -> int:
        return self.x_train.shape[1]


def _flat(images: np.ndarray) -> np.ndarray:
    """Images of any shape as (N, features) float32 in [0, 1]."""
    return images.reshape(len(images), -1).astype(np.float32) / np.float32(255)


def _stratified_subset(x, y, size, seed):
    """A class-balanced random subset of `size` samples (all of them if fewer)."""
    if size is None or size >= len(y):
        return x, y
    x_sub, _, y_sub, _ = train_test_split(x, y, train_size=size, stratify=y, random_state=seed)
    return x_sub, y_sub


def load_digits(cache_dir: Path) -> Dataset:
    """mlxtend's 5,000 MNIST digits split 4,000 train / 1,000 test (CSV layout)."""
    cache_dir = Path(cache_dir)
    if not (cache_dir / "test_labels.csv").exists():
        data.write_embedded_default(cache_dir)
    x_train, y_train = data.read_train_csv(cache_dir / "train.csv")
    x_test = data.read_test_csv(cache_dir / "test.csv")
    y_test = data.read_test_labels(cache_dir / "test_labels.csv")
    # The CSV readers already scale to [0, 1]; only flatten.
    return Dataset(
        "digits",
        x_train.reshape(len(x_train), -1),
        np.asarray(y_train, dtype=np.int64),
        x_test.reshape(len(x_test), -1),
        np.asarray(y_test, dtype=np.int64),
        "MNIST sample bundled with mlxtend: 4,000 train / 1,000 test digits",
    )


def load_idx(directory: Path, train_size: int | None, test_size: int | None, seed: int = 0) -> Dataset:
    """An MNIST-style idx dataset of 28 x 28 images (Fashion-MNIST by
    default), optionally subsampled.

    Each of the four files may be plain or gzipped (``.gz``, as Debian's
    ``dataset-fashion-mnist`` ships them under /usr/share/datasets/fashion-mnist).

    Raises:
        DatasetUnavailable: if an idx file is missing or unreadable.
    """
    directory = Path(directory)
    # mlxtend reads only uncompressed idx files; gzipped ones are unpacked
    # into a scratch folder that goes away once the arrays are in memory.
    with tempfile.TemporaryDirectory(prefix="idx-") as scratch:
        (x_train, y_train), (x_test, y_test) = (
            _read_idx_pair(directory, images, labels, Path(scratch)) for images, labels in IDX_SPLITS
        )
    full = (len(y_train), len(y_test))
    x_train, y_train = _stratified_subset(_flat(x_train), y_train.astype(np.int64), train_size, seed)
    x_test, y_test = _stratified_subset(_flat(x_test), y_test.astype(np.int64), test_size, seed)
    return Dataset(
        "fashion",
        x_train,
        y_train,
        x_test,
        y_test,
        f"idx files in {directory}: stratified subset of {len(y_train):,} of {full[0]:,} train "
        f"and {len(y_test):,} of {full[1]:,} test images",
    )


def _read_idx_pair(directory: Path, images_name: str, labels_name: str, scratch: Path):
    """(images (N, 784) uint8, labels (N,) uint8) of one split, via mlxtend."""
    images_path = _plain_idx_file(directory, images_name, scratch)
    labels_path = _plain_idx_file(directory, labels_name, scratch)
    try:
        images, labels = loadlocal_mnist(str(images_path), str(labels_path))
    except (OSError, ValueError, struct.error) as error:
        # mlxtend reshapes the pixels to one 784-pixel row per label, so a
        # truncated file or a count mismatch ends up here as a ValueError.
        raise DatasetUnavailable(
            f"idx dataset not usable: cannot read {directory / images_name} with {directory / labels_name} "
            f"as 28 x 28 images with one label each: {error}; skipping it."
        ) from error
    if labels.size and labels.max() > 9:
        raise DatasetUnavailable(
            f"idx dataset not usable: {directory / labels_name} holds label {labels.max()}, expected 0..9 "
            "(is it a labels file?); skipping it."
        )
    return images, labels


def _plain_idx_file(directory: Path, name: str, scratch: Path) -> Path:
    """``directory/name`` if present, else ``name.gz`` unpacked into ``scratch``."""
    plain, packed = directory / name, directory / f"{name}.gz"
    if plain.is_file():
        return plain
    if not packed.is_file():
        raise DatasetUnavailable(f"idx dataset not usable: {plain} not found (nor {name}.gz); skipping it.")
    target = scratch / name
    try:
        with gzip.open(packed, "rb") as source, open(target, "wb") as sink:
            shutil.copyfileobj(source, sink)
    except (OSError, EOFError, zlib.error) as error:  # gzip.BadGzipFile is an OSError
        raise DatasetUnavailable(f"idx dataset not usable: cannot unpack {packed}: {error}; skipping it.") from error
    return target


def load_cifar10(directory: Path, train_size: int | None, test_size: int | None, seed: int = 0) -> Dataset:
    """CIFAR-10 from Keras's cache layout (python pickles), flattened to 3,072 features.

    Raises:
        DatasetUnavailable: if the batches are not in `directory`; nothing is
            downloaded, so the study runs offline.
    """
    directory = Path(directory)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    missing = [name for name in names if not (directory / name).exists()]
    if missing:
        raise DatasetUnavailable(
            f"CIFAR-10 not found: {directory} lacks {', '.join(missing)} "
            "(put Keras's cifar-10-batches-py there to include it); skipping CIFAR-10."
        )
    parts = []
    for name in names:
        with open(directory / name, "rb") as file:
            batch = pickle.load(file, encoding="bytes")
        parts.append((np.asarray(batch[b"data"]), np.asarray(batch[b"labels"], dtype=np.int64)))
    x_train = np.concatenate([x for x, _ in parts[:-1]])
    y_train = np.concatenate([y for _, y in parts[:-1]])
    x_train, y_train = _stratified_subset(_flat(x_train), y_train, train_size, seed)
    x_test, y_test = _stratified_subset(_flat(parts[-1][0]), parts[-1][1], test_size, seed)
    return Dataset(
        "cifar10", x_train, y_train, x_test, y_test,
        f"CIFAR-10 from {directory}: {len(y_train):,} train / {len(y_test):,} test images (3,072 features)",
    )


def shrink(dataset: Dataset, train_size: int, test_size: int, seed: int = 0) -> Dataset:
    """A stratified subset of a dataset, for `--quick` smoke runs."""
    x_train, y_train = _stratified_subset(dataset.x_train, dataset.y_train, train_size, seed)
    x_test, y_test = _stratified_subset(dataset.x_test, dataset.y_test, test_size, seed)
    return Dataset(
        dataset.name, x_train, y_train, x_test, y_test,
        f"{dataset.description} (quick: {len(y_train)} train / {len(y_test)} test)",
    )


def subset(dataset: Dataset, train_size: int, seed: int = 0) -> Dataset:
    """`dataset` with a stratified subset of `train_size` training samples
    (the same subset for a given seed) and its whole test set."""
    x_train, y_train = _stratified_subset(dataset.x_train, dataset.y_train, train_size, seed)
    return Dataset(
        dataset.name, x_train, y_train, dataset.x_test, dataset.y_test,
        f"{dataset.name}: stratified subset of {len(y_train):,} of {len(dataset.y_train):,} training images, "
        f"{len(dataset.y_test):,} test images",
    )


def load(name: str, cache_dir: Path, idx_dir: Path = DEFAULT_FASHION_DIR,
         cifar_dir: Path = DEFAULT_CIFAR_DIR, train_size: int | None = None,
         test_size: int | None = None) -> Dataset:
    """Loads a dataset by name (one of `DATASET_NAMES`)."""
    if name == "digits":
        return load_digits(Path(cache_dir) / "digits")
    if name == "fashion":
        return load_idx(Path(idx_dir), train_size, test_size)
    if name == "cifar10":
        return load_cifar10(Path(cifar_dir), train_size, test_size)
    raise ValueError(f"unknown dataset {name!r}; expected one of {DATASET_NAMES}")
