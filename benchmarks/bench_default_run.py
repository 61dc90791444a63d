"""README's main job, timed side by side against an earlier commit.

    python benchmarks/bench_default_run.py --baseline c619839 --seeds 0,1,2 \\
        --json benchmarks/results/default_run_cpu.json
    python benchmarks/bench_default_run.py --table benchmarks/results/default_run_cpu.json

For each seed, runs `python -m pipelines.digit_recognizer --moe 3,5
--hidden 64 --seed S` (README's default, with the run's seed) once at
`--baseline` (checked out into a temporary git worktree) and once at the
working tree, alternating which goes first, each in a fresh process on the
same `train.csv` / `test.csv` (`--data`). Both sides use this interpreter,
so the libraries are the same; only the pipeline's code differs.

From each run's own record it keeps the training wall time (`wall_time_s`:
building, fitting and predicting), the epochs run, and the validation and
held-out test accuracy; it adds the process's wall time (imports and data
loading included) and the machine's load average when the run ended. The
record's summary gives, per side, the median and range over seeds, and the
ratio of the training times seed by seed (working tree over baseline).

`--quick` (tests) passes `--epochs 1` to both sides.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_COMMAND = ["--moe", "3,5", "--hidden", "64"]
RUN_FIELDS = ("wall_time_s", "epochs_run", "validation_accuracy", "test_accuracy")


def _git(*args, cwd=ROOT):
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def run_once(code_dir, data_dir, seed, out_dir, extra):
    """One pipeline run from `code_dir`; returns the fields kept from its record."""
    out = Path(out_dir) / f"run-s{seed}.csv"
    command = [sys.executable, "-m", "pipelines.digit_recognizer", *DEFAULT_COMMAND,
               "--seed", str(seed), "--data", str(data_dir), "--out", str(out), "--quiet", *extra]
    started = time.perf_counter()
    finished = subprocess.run(command, cwd=code_dir, capture_output=True, text=True)
    process_s = time.perf_counter() - started
    if finished.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} (in {code_dir}) exited {finished.returncode}:\n"
                           f"{finished.stderr[-3000:]}")
    record = json.loads(out.with_suffix(".json").read_text())
    row = {field: record[field] for field in RUN_FIELDS}
    row.update(seed=seed, process_s=round(process_s, 1), load_average=list(os.getloadavg()))
    return row


def summarise(runs):
    """Median and range per side, and the per-seed ratio of training times."""
    summary = {}
    for side in ("baseline", "current"):
        rows = [r for r in runs if r["side"] == side]
        summary[side] = {
            field: {"median": statistics.median(r[field] for r in rows),
                    "min": min(r[field] for r in rows), "max": max(r[field] for r in rows),
                    "mean": statistics.fmean(r[field] for r in rows)}
            for field in ("wall_time_s", "process_s", "validation_accuracy", "test_accuracy")
            if all(r[field] is not None for r in rows)
        }
    by_seed = {}
    for r in runs:
        by_seed.setdefault(r["seed"], {})[r["side"]] = r
    ratios = [pair["current"]["wall_time_s"] / pair["baseline"]["wall_time_s"]
              for pair in by_seed.values() if len(pair) == 2]
    summary["training_time_ratio"] = {"per_seed": [round(x, 3) for x in ratios],
                                      "median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
    return summary


def measure(baseline, data_dir, seeds, extra, keep=None):
    """Runs both sides for every seed, alternating the order; returns the
    rows. With `keep`, the working tree's run records and probabilities are
    copied there."""
    runs = []
    with tempfile.TemporaryDirectory() as scratch:
        worktree = Path(scratch) / "baseline"
        _git("worktree", "add", "--detach", "--force", str(worktree), baseline)
        try:
            for index, seed in enumerate(seeds):
                sides = [("baseline", worktree), ("current", ROOT)]
                for side, code_dir in (sides if index % 2 == 0 else sides[::-1]):
                    out_dir = Path(scratch) / f"{side}-{seed}"
                    out_dir.mkdir()
                    row = run_once(code_dir, data_dir, seed, out_dir, extra)
                    row["side"] = side
                    runs.append(row)
                    if keep is not None and side == "current":
                        keep.mkdir(parents=True, exist_ok=True)
                        # The probabilities too, so an ensemble can be rebuilt from the kept runs.
                        for suffix in (".json", ".probs.npz"):
                            shutil.copyfile(out_dir / f"run-s{seed}{suffix}",
                                            keep / f"cnn-moe3of5-h64-s0-seed{seed}{suffix}")
                    print(json.dumps(row), flush=True)
        finally:
            _git("worktree", "remove", "--force", str(worktree))
    return runs


def table(record):
    """Markdown table of a record (the report's own builder)."""
    from pipelines.reports.digit_recognizer import default_run_table

    return default_run_table(record)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="c619839", help="commit to compare with (default c619839)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "digit-recognizer")
    parser.add_argument("--json", type=Path, help="write the record here")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="copy the working tree's run records here")
    parser.add_argument("--quick", action="store_true", help="one epoch a run (tests)")
    parser.add_argument("--table", type=Path, metavar="RECORD", help="print the Markdown table of a record and exit")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.table:
        from pipelines.records import print_record_table

        return print_record_table(args.table, table)
    from pipelines import records

    if not (args.data / "train.csv").is_file():
        sys.exit(f"error: {args.data / 'train.csv'} not found; run the pipeline once to write the embedded sample")
    seeds = [int(s) for s in args.seeds.split(",")]
    extra = ["--epochs", "1"] if args.quick else []
    started = time.perf_counter()
    runs = measure(args.baseline, args.data.resolve(), seeds, extra, args.keep)
    record = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "pipeline_command": "python -m pipelines.digit_recognizer " + " ".join(DEFAULT_COMMAND) + " --seed S",
        "baseline": _git("rev-parse", "--short", args.baseline),
        "current": _git("rev-parse", "--short", "HEAD") + ("+dirty" if _git("status", "--porcelain", "--untracked-files=no") else ""),
        "seeds": seeds, "quick": args.quick, "runs": runs, "summary": summarise(runs),
        "total_s": round(time.perf_counter() - started, 1),
        "versions": records.library_versions(), "machine": records.machine_description(),
    }
    if args.json:
        records.write_json_atomically(args.json, record)
    print(table(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
