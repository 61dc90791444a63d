"""`python -m pipelines.fashion_csv`: Fashion-MNIST as Kaggle digit-recognizer CSVs.

Most tests run on a small synthetic idx pool (500 + 100 random images,
balanced classes) so they need neither the Debian package nor time; one
checks the split of the real 70,000-image pool when the package is there.
"""

import gzip
import json

import numpy as np
import pandas as pd
import pytest

from pipelines import data
from pipelines import fashion_csv

PIXELS = 28 * 28


def write_idx_pool(directory, train_per_class=50, test_per_class=10, seed=1):
    """Gzipped idx files of random, pairwise distinct images with balanced,
    shuffled labels; returns (images, labels) of the pool (train then t10k)."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    pool_images, pool_labels = [], []
    for (images_name, labels_name), per_class in zip(fashion_csv.IDX_FILES, (train_per_class, test_per_class)):
        labels = rng.permutation(np.repeat(np.arange(10, dtype=np.uint8), per_class))
        images = rng.integers(0, 256, size=(len(labels), PIXELS), dtype=np.uint8)
        with gzip.open(directory / f"{images_name}.gz", "wb") as handle:
            handle.write((0x803).to_bytes(4, "big") + len(labels).to_bytes(4, "big")
                         + (28).to_bytes(4, "big") + (28).to_bytes(4, "big") + images.tobytes())
        with gzip.open(directory / f"{labels_name}.gz", "wb") as handle:
            handle.write((0x801).to_bytes(4, "big") + len(labels).to_bytes(4, "big") + labels.tobytes())
        pool_images.append(images)
        pool_labels.append(labels)
    images, labels = np.concatenate(pool_images), np.concatenate(pool_labels).astype(np.int64)
    assert len({row.tobytes() for row in images}) == len(images)
    return images, labels


@pytest.fixture
def pool(tmp_path):
    source = tmp_path / "idx"
    images, labels = write_idx_pool(source)
    return source, images, labels


def _written(out, source, *extra):
    assert fashion_csv.main(["--quick", "--source", str(source), "--out", str(out), *extra]) == 0


def test_quick_writes_the_kaggle_layout_and_the_pipeline_scores_it(pool, tmp_path):
    source, _, _ = pool
    out = tmp_path / "csv"
    # A stale marker of the embedded MNIST sample must not label these files.
    out.mkdir()
    (out / ".embedded").write_text("stale\n")
    _written(out, source)

    header = (out / "train.csv").read_text().split("\n", 1)[0].split(",")
    assert header == ["label", *(f"pixel{i}" for i in range(PIXELS))]
    assert (out / "test.csv").read_text().split("\n", 1)[0].split(",") == header[1:]
    images, labels = data.read_train_csv(out / "train.csv")
    test_images = data.read_test_csv(out / "test.csv")
    test_labels = data.read_test_labels(out / "test_labels.csv")
    assert images.shape == (fashion_csv.QUICK_TRAIN_ROWS, 28, 28, 1) and len(labels) == fashion_csv.QUICK_TRAIN_ROWS
    assert test_images.shape == (fashion_csv.QUICK_TEST_ROWS, 28, 28, 1)
    assert len(test_labels) == fashion_csv.QUICK_TEST_ROWS
    assert data.validate_submission(out / "sample_submission.csv", expected_rows=fashion_csv.QUICK_TEST_ROWS) == 200
    assert (pd.read_csv(out / "sample_submission.csv")["Label"] == 0).all()

    source_info = data.prepare_data_dir(out, download=None, log=lambda line: pytest.fail(line))
    assert source_info.origin == "local"
    assert source_info.test_labels_csv == out / "test_labels.csv"
    assert not (out / ".embedded").exists()

    manifest = json.loads((out / fashion_csv.MANIFEST_NAME).read_text())
    assert manifest["train_rows"] == 300 and manifest["test_rows"] == 200 and manifest["seed"] == 0
    assert manifest["test_images_also_in_train"] == 0
    assert set(manifest["files"]) == {"train.csv", "test.csv", "test_labels.csv", "sample_submission.csv"}
    for name, info in manifest["files"].items():
        assert info["bytes"] == (out / name).stat().st_size
    # No temporary file left behind by the atomic writes.
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["train.csv", "test.csv", "test_labels.csv", "sample_submission.csv", fashion_csv.MANIFEST_NAME])


def test_rows_are_pool_images_with_their_labels_disjoint_and_stratified(pool, tmp_path):
    source, pool_images, pool_labels = pool
    out = tmp_path / "csv"
    _written(out, source)
    label_of = {row.tobytes(): int(label) for row, label in zip(pool_images, pool_labels)}

    train = pd.read_csv(out / "train.csv").to_numpy(np.uint8)
    test = pd.read_csv(out / "test.csv").to_numpy(np.uint8)
    truth = pd.read_csv(out / "test_labels.csv")
    assert truth["ImageId"].tolist() == list(range(1, len(test) + 1))

    train_keys = [row[1:].tobytes() for row in train]
    test_keys = [row.tobytes() for row in test]
    # Every row is an image of the pool, carrying (train.csv) or matched to
    # (test_labels.csv) that image's own label.
    assert [label_of[key] for key in train_keys] == train[:, 0].tolist()
    assert [label_of[key] for key in test_keys] == truth["Label"].tolist()
    # No image twice, and none in both files.
    assert len(set(train_keys)) == len(train_keys) and len(set(test_keys)) == len(test_keys)
    assert not set(train_keys) & set(test_keys)

    # The pool is balanced, so stratification asks for size / 10 per class.
    # sklearn's stratified split allocates each class its share rounded by
    # largest remainder, so a count is off by at most one.
    for labels, size in ((train[:, 0], 300), (truth["Label"].to_numpy(), 200)):
        counts = np.bincount(labels, minlength=10)
        assert counts.sum() == size
        assert np.abs(counts - size / 10).max() <= 1, counts
    # Shuffled: the file order is not the class order.
    assert not np.all(np.diff(train[:, 0].astype(int)) >= 0)


def test_same_seed_same_bytes_other_seed_other_split(pool, tmp_path):
    source, _, _ = pool
    _written(tmp_path / "a", source)
    _written(tmp_path / "b", source)
    _written(tmp_path / "c", source, "--seed", "1")
    for name in ("train.csv", "test.csv", "test_labels.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / "train.csv").read_bytes() != (tmp_path / "c" / "train.csv").read_bytes()


def test_row_counts_and_missing_or_bad_source(pool, tmp_path, capsys):
    source, _, _ = pool
    out = tmp_path / "csv"
    _written(out, source, "--train-rows", "420", "--test-rows", "180")
    assert len(data.read_test_labels(out / "test_labels.csv")) == 180
    assert len(data.read_train_csv(out / "train.csv")[1]) == 420

    assert fashion_csv.main(["--quick", "--source", str(source), "--out", str(tmp_path / "x"),
                             "--train-rows", "500", "--test-rows", "101"]) == 2
    assert "pool of 600" in capsys.readouterr().err

    assert fashion_csv.main(["--quick", "--source", str(tmp_path / "nowhere"), "--out", str(tmp_path / "y")]) == 2
    assert "apt-get install -y dataset-fashion-mnist" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()

    # Labels given as the images file: the header says so.
    bad = tmp_path / "bad"
    write_idx_pool(bad)
    (bad / "train-images-idx3-ubyte.gz").write_bytes((bad / "train-labels-idx1-ubyte.gz").read_bytes())
    assert fashion_csv.main(["--quick", "--source", str(bad), "--out", str(tmp_path / "z")]) == 2
    assert "is not 3-D unsigned bytes" in capsys.readouterr().err


def test_csv_text_matches_pandas():
    values = np.random.default_rng(0).integers(0, 256, size=(7, 5))
    header = ["a", "b", "c", "d", "e"]
    assert fashion_csv.csv_text(header, values) == pd.DataFrame(values, columns=header).to_csv(
        index=False, lineterminator="\n")
    with pytest.raises(ValueError):
        fashion_csv.csv_text(header, values + 1000)


@pytest.mark.skipif(not (fashion_csv.DEFAULT_SOURCE / "train-images-idx3-ubyte.gz").exists(),
                    reason="Fashion-MNIST idx files not installed (apt-get install -y dataset-fashion-mnist)")
def test_real_pool_splits_into_competition_sizes():
    images, labels = fashion_csv.load_pool()
    assert images.shape == (70_000, PIXELS) and np.bincount(labels).tolist() == [7000] * 10
    train, test = fashion_csv.split_pool(labels, fashion_csv.TRAIN_ROWS, fashion_csv.TEST_ROWS, seed=0)
    assert len(train) == 42_000 and len(test) == 28_000
    assert np.union1d(train, test).tolist() == list(range(70_000))
    # 7,000 a class: exactly 60% and 40% of each class.
    assert np.bincount(labels[train]).tolist() == [4200] * 10
    assert np.bincount(labels[test]).tolist() == [2800] * 10


def test_zero_rows_are_an_error_and_an_out_that_is_a_file_is_reported(pool, tmp_path, capsys):
    source, _, _ = pool
    # 0 is not "unset": it must not fall back to the (full-size) default.
    for option in ("--train-rows", "--test-rows"):
        assert fashion_csv.main(["--quick", "--source", str(source), "--out", str(tmp_path / "zero"),
                                 option, "0"]) == 2
        assert "need at least 10 rows per file" in capsys.readouterr().err
    assert not (tmp_path / "zero").exists()
    (tmp_path / "a-file").write_text("keep")
    assert fashion_csv.main(["--quick", "--source", str(source), "--out", str(tmp_path / "a-file")]) == 2
    assert "cannot write to" in capsys.readouterr().err
    assert (tmp_path / "a-file").read_text() == "keep"
