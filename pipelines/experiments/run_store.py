"""One JSON record per trained run, so that a long study resumes where it
stopped and its report is rebuilt from committed records.

A record holds everything the tables need (the run's row of numbers and its
per-epoch logs) plus its provenance (`pipelines.records.run_record`: command,
seed, library versions, machine, load average, wall time). Records are
written atomically once the run is finished, so a killed run leaves no
record and is simply trained again next time.

Runs can be shared between processes with `shard=(i, count)`: each process
trains the runs whose position in the experiment's list is `i` modulo
`count`, and a last call without a shard finds every record and writes the
tables.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipelines import records

SCHEMA = 1


class UnusableRecord(ValueError):
    """A run record is not readable, or was trained under other settings."""


def slug(text: str) -> str:
    """A file-name-safe form of a config label (`n=4 k=1, std.` -> `n4-k1-std`)."""
    text = re.sub(r"[=,.]", "", str(text).lower())
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-") or "run"


@dataclass
class RunStore:
    """Where one experiment keeps its run records.

    Attributes:
        root: the folder of all study records (`reports/records/study`).
        experiment: the experiment's name; its records go to
            `root/<experiment>/`.
        shard: `(index, count)` to train only every count-th run, or `None`.
        recorded_only: train nothing; the experiment's tables and figures
            show the runs recorded so far.
        only: labels of the configurations to train (all when empty), so
            that a session can record the short runs of an experiment
            before its long ones.
    """

    root: Path
    experiment: str
    shard: tuple[int, int] | None = None
    recorded_only: bool = False
    only: tuple[str, ...] = ()

    def __post_init__(self):
        self.root = Path(self.root)
        if self.shard is not None:
            index, count = self.shard
            if not 0 <= index < count:
                raise ValueError(f"`shard` must be (index, count) with 0 <= index < count; got {self.shard}.")

    def path(self, label: str, dataset: str, seed: int) -> Path:
        return self.root / self.experiment / f"{slug(dataset)}--{slug(label)}--s{int(seed)}.json"

    def owns(self, position: int, label: str) -> bool:
        """Whether this process trains the run at `position` of the
        experiment's list, of the configuration labelled `label`."""
        if self.recorded_only or (self.only and label not in self.only):
            return False
        return self.shard is None or position % self.shard[1] == self.shard[0]

    def load(self, label: str, dataset: str, seed: int, settings=None):
        """`(row, history)` of a recorded run, or `None` if it has no record.

        `settings` (the run's `TrainConfig`, if given) must have the recorded
        run's maximum epochs and patience, unless `recorded_only`: a resumed
        sweep does not mix runs of other settings into its tables.

        Raises:
            UnusableRecord: a ValueError naming the file, when a record is not
                readable JSON of this schema or was trained under other
                settings (it is never silently retrained over).
        """
        path = self.path(label, dataset, seed)
        if not path.exists():
            return None
        try:
            record = json.loads(path.read_text())
            if record.get("schema") != SCHEMA:
                raise ValueError(f"schema {record.get('schema')!r}, expected {SCHEMA}")
            row, history = record["metrics"], pd.DataFrame(record["history"])
        except (ValueError, KeyError, TypeError) as error:
            raise UnusableRecord(f"{path}: not a usable run record ({error}); delete it to train the run again.") from error
        if settings is not None and not self.recorded_only:
            for key, value in (("max_epochs", settings.epochs), ("patience", settings.patience)):
                if key in row and row[key] != value:
                    raise UnusableRecord(
                        f"{path}: recorded with {key} {row[key]}, this call asks for {value}; pass the "
                        f"recorded settings, another --records folder, or delete the record to train it again.")
        return row, history

    def save(self, label: str, dataset: str, seed: int, row: dict, history: pd.DataFrame,
             model_config, train_config, started: float) -> Path:
        """Writes the record of a finished run (atomically)."""
        path = self.path(label, dataset, seed)
        record = records.run_record(
            {"label": label, "model": asdict(model_config), "train": asdict(train_config)},
            int(seed),
            started,
            schema=SCHEMA,
            experiment=self.experiment,
            dataset=dataset,
            metrics=row,
            history=history.to_dict("list"),
        )
        records.write_json_atomically(path, record)
        return path
