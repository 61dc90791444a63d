"""This account's past submissions, and reading the client's ``ApiSubmission``."""

from __future__ import annotations

from typing import Any

from pipelines.kaggle.client import COMPETITION, authenticated_api, call


def status_name(status: Any) -> str:
    return getattr(status, "name", None) or str(status or "PENDING")


def parse_score(score: Any) -> float | None:
    """``ApiSubmission.public_score`` (a string, empty until scored) as a float."""
    if score is None or (isinstance(score, str) and not score.strip()):
        return None
    try:
        return float(score)
    except (TypeError, ValueError):
        return None


def list_submissions(*, retries: int = 3, backoff: float = 2.0) -> list[dict[str, Any]]:
    """The most recent digit-recognizer submissions (first page, newest first).

    Returns:
        One dict per submission: ``ref``, ``date`` (ISO string or None),
        ``file_name``, ``description``, ``status``, ``public_score`` (float or None).

    Raises:
        KaggleError: no or rejected credentials, or Kaggle unreachable.
    """
    api = authenticated_api()
    submissions = call(api, api.competition_submissions, COMPETITION, what="listing submissions",
                       retries=retries, backoff=backoff, retry_command=None)
    return [
        {
            "ref": int(sub.ref) if sub.ref else None,
            "date": sub.date.isoformat() if sub.date else None,
            "file_name": sub.file_name,
            "description": sub.description,
            "status": status_name(sub.status),
            "public_score": parse_score(sub.public_score),
        }
        for sub in submissions or []
        if sub is not None
    ]


def format_submissions_table(rows: list[dict[str, Any]]) -> str:
    """:func:`list_submissions` rows as a fixed-width text table for the terminal,
    header first; ``"(no submissions)"`` when there are none."""
    if not rows:
        return "(no submissions)"
    columns = [("ref", "ref"), ("date", "date"), ("file_name", "file"), ("status", "status"),
               ("public_score", "score"), ("description", "description")]

    def cell(row: dict[str, Any], key: str) -> str:
        value = row.get(key)
        if value is None:
            return "-"
        if key == "public_score" and isinstance(value, float):
            return f"{value:.5f}"
        return str(value).replace("\n", " ")

    table = [[label for _, label in columns]] + [[cell(r, key) for key, _ in columns] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    lines = ["  ".join(text.ljust(width) for text, width in zip(line, widths)).rstrip() for line in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
