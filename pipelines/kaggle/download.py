"""The competition data, fetched and unpacked by the client's own
``competition_download_files(..., unzip=True)``."""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from pipelines.kaggle.client import COMPETITION, KaggleError, authenticated_api, call, has_credentials

EXPECTED_FILES = ("train.csv", "test.csv", "sample_submission.csv")
# sample_submission.csv only informs; without it training still runs.
REQUIRED_FILES = ("train.csv", "test.csv")


def download_command(data_dir: str | os.PathLike[str]) -> str:
    """The CLI line that downloads the competition data into ``data_dir``."""
    return shlex.join(["kaggle", "competitions", "download", "-c", COMPETITION, "-p", str(data_dir)])


def download_competition_data(
    data_dir: str | os.PathLike[str],
    *,
    retries: int = 3,
    backoff: float = 2.0,
    log: Callable[[str], Any] = print,
) -> bool:
    """Download and unpack the digit-recognizer CSVs into ``data_dir``.

    The ``download`` seam of ``pipelines.data.prepare_data_dir``. The client
    downloads and unzips into a staging folder inside ``data_dir``; only when
    that yields train.csv and test.csv are the CSVs moved into place, so a
    failed or interrupted download leaves ``data_dir`` as it was: no archive,
    no partial CSV, no good CSV overwritten.

    Returns:
        False, without importing ``kaggle``, when no credentials are
        configured; True once train.csv and test.csv are in ``data_dir``.

    Raises:
        KaggleError: the download failed (credentials, rules, server or
            connection errors after ``retries``), the archive is not a valid
            zip, or it lacks train.csv or test.csv.
    """
    if not has_credentials():
        return False
    data_dir = Path(data_dir)
    retry_cmd = download_command(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    api = authenticated_api(retry_cmd)
    log(f"Kaggle: downloading {COMPETITION} data into {data_dir}")
    # Inside data_dir, so that the final moves are renames on one file system.
    staging = Path(tempfile.mkdtemp(dir=data_dir, prefix=".kaggle-download-"))
    try:

        def fetch() -> None:
            try:
                api.competition_download_files(COMPETITION, path=str(staging), quiet=True, unzip=True)
            except ValueError as exc:  # the client's word for an archive that is not a zip
                raise KaggleError(
                    f"The {COMPETITION} data Kaggle sent is not a valid zip archive; "
                    f"nothing in {data_dir} was changed. Try again later.",
                    retry_command=retry_cmd,
                    kind="data",
                ) from exc

        call(api, fetch, what=f"downloading the {COMPETITION} data", retries=retries, backoff=backoff,
             retry_command=retry_cmd)
        missing = [name for name in REQUIRED_FILES if not (staging / name).is_file()]
        if missing:
            raise KaggleError(
                f"Kaggle download finished but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
                f"missing from it; nothing in {data_dir} was changed.",
                retry_command=retry_cmd,
                kind="data",
            )
        absent = [name for name in EXPECTED_FILES if not (staging / name).is_file()]
        if absent:
            log(f"Kaggle: warning: {', '.join(absent)} not in the download")
        for name in EXPECTED_FILES:
            if name not in absent:
                os.replace(staging / name, data_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return True
