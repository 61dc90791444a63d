"""Command line: `python -m pipelines.experiments <name> [options]`."""

from __future__ import annotations

import argparse
import csv
import io
import json
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from pipelines import arguments
from pipelines import records
from pipelines.experiments import datasets as datasets_lib
from pipelines.experiments import report as report_lib
from pipelines.experiments import studies
from pipelines.experiments.run_store import UnusableRecord
from pipelines.experiments.runner import STUDY_RECIPE
from pipelines.experiments.runner import study_train_config

NAMES = tuple(studies.EXPERIMENTS) + ("report", "all")
RUN_LOG = "run_log.csv"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.experiments",
        description="MoE study: train, aggregate over seeds, plot, and write reports/moe_study.md.",
    )
    parser.add_argument("name", help=f"experiment: one of {', '.join(NAMES)} ('all' runs every one, then 'report')")
    parser.add_argument("--out", type=Path, default=Path("reports"), help="CSVs, PNGs and the report (default: reports)")
    parser.add_argument("--runs", type=Path, default=Path("runs/experiments"),
                        help="scratch outputs such as the digits CSV cache (default: runs/experiments)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per configuration (default: 3)")
    parser.add_argument("--epochs", type=int, default=STUDY_RECIPE.epochs,
                        help=f"maximum epochs (default: {STUDY_RECIPE.epochs})")
    parser.add_argument("--patience", type=int, default=STUDY_RECIPE.patience,
                        help=f"early-stopping patience on val loss (default: {STUDY_RECIPE.patience})")
    parser.add_argument("--dataset", choices=datasets_lib.DATASET_NAMES, default="digits",
                        help="dataset of collapse/balancing/experts/specialisation (default: digits)")
    parser.add_argument("--data", type=Path, default=datasets_lib.DEFAULT_FASHION_DIR,
                        help="folder of idx files for the 'fashion' dataset")
    parser.add_argument("--cifar-dir", type=Path, default=datasets_lib.DEFAULT_CIFAR_DIR,
                        help="Keras-cache cifar-10-batches-py folder")
    parser.add_argument("--train-size", type=arguments.whole_number(10, "one row per class"), default=10_000, help="training subset of fashion/cifar10")
    parser.add_argument("--test-size", type=arguments.whole_number(10, "one row per class"), default=2_000, help="test subset of fashion/cifar10")
    parser.add_argument("--quick", action="store_true", help="smoke run: few hundred samples, 1 epoch, 1 seed")
    parser.add_argument("--records", type=Path, default=None,
                        help="folder of per-run JSON records, from which runs resume "
                             "(default: <out>/records/study; under --quick: <runs>/quick-records)")
    parser.add_argument("--shard", type=_shard, default=None, metavar="I/N",
                        help="train only runs I, I+N, I+2N, ... and record them; a later call without "
                             "--shard reads every record and writes the tables (run N processes at once)")
    parser.add_argument("--only", action="append", default=[], metavar="LABEL",
                        help="train only the runs of this configuration, by its label in the "
                             "tables (e.g. 'n=4 k=2'; repeatable); like --shard, the tables wait "
                             "for a later call")
    parser.add_argument("--recorded-only", action="store_true",
                        help="train nothing: write the tables and figures from the runs recorded so far")
    parser.add_argument("--sizes", type=_sizes, default=(), metavar="N,N,...",
                        help="datasize: training-set sizes (default: 1000,4000,15000,60000)")
    parser.add_argument("--arch", choices=("mlp", "cnn", "all"), default="all",
                        help="datasize: the architectures to train (default: all)")
    return parser


def _shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N such as 0/2; got {text!r}") from None
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"expected 0 <= I < N; got {text!r}")
    return index, count


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes such as 1000,4000; got {text!r}") from None
    if any(size < 10 for size in sizes):
        raise argparse.ArgumentTypeError(f"every size must be at least 10; got {text!r}")
    return sizes


def context_from(args) -> studies.Context:
    seeds, epochs = (1, 1) if args.quick else (args.seeds, args.epochs)
    return studies.Context(
        out=args.out,
        runs=args.runs,
        seeds=list(range(seeds)),
        settings=study_train_config(epochs=epochs, patience=args.patience, run_eagerly=args.quick),
        dataset=args.dataset,
        idx_dir=args.data,
        cifar_dir=args.cifar_dir,
        subset=(args.train_size, args.test_size),
        quick=args.quick,
        records=args.records or (args.runs / "quick-records" if args.quick else args.out / "records" / "study"),
        shard=args.shard,
        only=tuple(args.only),
        sizes=args.sizes,
        archs=("mlp", "cnn") if args.arch == "all" else (args.arch,),
        recorded_only=args.recorded_only,
    )


def main(argv=None) -> int:
    """Runs one experiment (or all, or the report); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.name not in NAMES:
        print(f"error: unknown experiment {args.name!r}; choose one of: {', '.join(NAMES)}", file=sys.stderr)
        return 2
    if args.seeds < 1 or args.epochs < 1:
        print("error: --seeds and --epochs must be at least 1", file=sys.stderr)
        return 2
    if args.name in studies.UNRECORDED and (args.shard or args.only or args.recorded_only):
        print(f"error: {args.name} keeps no run records; --shard, --only and --recorded-only apply to "
              f"the other experiments", file=sys.stderr)
        return 2
    try:
        context = context_from(args)
    except ValueError as error:  # the training config's own checks
        print(f"error: {error}", file=sys.stderr)
        return 2
    names = list(studies.EXPERIMENTS) if args.name == "all" else [args.name]
    for name in names:
        if name == "report":
            continue
        started = time.perf_counter()
        print(f"== {name} ==", flush=True)
        try:
            studies.EXPERIMENTS[name](context)
        # OSError: --out or --runs is a file, a folder is not writable, ...
        except (studies.NothingRecorded, datasets_lib.DatasetUnavailable, UnusableRecord, OSError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        if context.sharded or context.recorded_only:
            # The runs and their commands are in their records (the report's
            # provenance table reads them); the run log lists whole runs.
            continue
        _log_run(args.out, name + context.tag, argv, time.perf_counter() - started, args.quick)
    if args.name in ("report", "all"):
        if _is_committed_report_folder(args.out):
            # The committed report is prose around generated blocks; only
            # the blocks are rebuilt, from the committed records and CSVs.
            from pipelines.reports import main as rebuild_blocks

            return rebuild_blocks([])
        path = report_lib.write_report(args.out)
        print(f"wrote {path}")
    return 0


def _is_committed_report_folder(out: Path) -> bool:
    from pipelines.reports import ROOT

    return Path(out).resolve() == (ROOT / "reports").resolve()


RUN_LOG_COLUMNS = ("experiment", "command", "wall_seconds", "finished_utc", "quick", "machine", "versions")


def _log_run(out: Path, name: str, argv, seconds: float, quick: bool):
    """Adds the command, its wall time, the machine and the library versions
    (JSON, from `pipelines.records`) to `<out>/run_log.csv`, for the report.

    The log is rewritten atomically with every row; rows of a log written
    before the machine and versions were recorded get empty cells there.
    """
    path = out / RUN_LOG
    rows, fields = [], list(RUN_LOG_COLUMNS)
    if path.exists():
        with open(path, newline="") as file:
            reader = csv.DictReader(file)
            rows = list(reader)
            fields += [f for f in reader.fieldnames or () if f not in fields]
    rows.append({
        "experiment": name,
        "command": "python -m pipelines.experiments " + shlex.join(argv),
        "wall_seconds": f"{seconds:.0f}",
        "finished_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "quick": quick,
        "machine": json.dumps(records.machine_description(), sort_keys=True),
        "versions": json.dumps(records.library_versions(), sort_keys=True),
    })
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, restval="")
    writer.writeheader()
    writer.writerows(rows)
    records.write_text_atomically(path, buffer.getvalue())
