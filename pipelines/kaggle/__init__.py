"""Kaggle I/O of the digit-recognizer pipeline, through the official ``kaggle`` client.

- ``client``: credentials, authentication, per-request retries and one
  :class:`KaggleError` for every failure;
- ``download``: the competition CSVs;
- ``submit``: upload, score, and the score in the run record;
- ``submissions``: this account's past submissions.

Importing this package never imports ``kaggle`` (see ``client``).
"""

from pipelines.kaggle.client import COMPETITION, RULES_URL, KaggleError, has_credentials
from pipelines.kaggle.download import EXPECTED_FILES, download_command, download_competition_data
from pipelines.kaggle.submissions import format_submissions_table, list_submissions
from pipelines.kaggle.submit import (
    SubmissionResult,
    await_score,
    record_submission,
    result_from_record,
    submission_limits,
    submit,
    submit_command,
)

__all__ = [
    "COMPETITION",
    "EXPECTED_FILES",
    "RULES_URL",
    "KaggleError",
    "SubmissionResult",
    "await_score",
    "download_command",
    "download_competition_data",
    "format_submissions_table",
    "has_credentials",
    "list_submissions",
    "record_submission",
    "result_from_record",
    "submission_limits",
    "submit",
    "submit_command",
]
