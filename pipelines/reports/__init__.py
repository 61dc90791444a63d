"""`python -m pipelines.reports`: every measured table from committed records.

The Markdown files of this repository (README.md, reports/*.md,
benchmarks/README.md) quote measurements only inside generated blocks:

    <!-- begin: NAME -->
    ...text written by this command...
    <!-- end: NAME -->

Each block is registered here with the file it lives in and a builder, a
function that reads committed records and returns the block's Markdown.
Records are the JSON files under `reports/records/` and
`benchmarks/results/`, and the study's CSVs in `reports/` (the experiments
write them, one row per seed or per epoch, and they are committed).

    python -m pipelines.reports           # rewrite every block from the records
    python -m pipelines.reports --check   # exit 1 naming every block that would change (CI)

Adding a block: put the two marker lines in the target file and register a
builder,

    @report_block("README.md", "peers")
    def peers(records: Records) -> str:
        run = records.json("benchmarks/results/peers.json")
        return markdown_table([...], [...])

`records.json(path)` / `records.csv(path)` / `records.glob(pattern)` read
files relative to the repository root and raise `RecordError` naming the
file when one is missing or unreadable. This module imports no TensorFlow,
Keras or pandas, so it runs in seconds; SciPy is imported only by the study
builders that quote Welch t-tests.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pipelines.records import markdown_table, write_text_atomically

ROOT = Path(__file__).resolve().parents[2]


# The registry ----------------------------------------------------------------


class RecordError(Exception):
    """A record a builder needs is missing or unreadable; the message names it."""


class MarkerError(Exception):
    """A target file lacks a block's markers, or has them more than once."""


@dataclass(frozen=True)
class Block:
    """One generated block: `target` (a path relative to the repository
    root), the marker `name`, and `builder(records) -> Markdown`."""

    target: str
    name: str
    builder: Callable[["Records"], str]


BLOCKS: list[Block] = []


def report_block(target: str, name: str):
    """Decorator registering `builder(records: Records) -> str` as the text of
    the block `name` in `target`. The same builder may be registered for
    several targets by stacking decorators."""

    def register(builder):
        if any(b.target == target and b.name == name for b in BLOCKS):
            raise ValueError(f"block {name!r} in {target} is registered twice")
        BLOCKS.append(Block(target, name, builder))
        return builder

    return register


class Records:
    """Read-only access to the committed records under a repository root."""

    def __init__(self, root: Path | str = ROOT):
        self.root = Path(root)
        self._cache: dict[tuple[str, str], object] = {}
        # The records read since `render` last reset it: an error message
        # names the ones the failing block read.
        self.read: list[str] = []

    def _note(self, relative: str) -> None:
        if relative not in self.read:
            self.read.append(relative)

    def path(self, relative: str) -> Path:
        self._note(relative)
        path = self.root / relative
        if not path.is_file():
            raise RecordError(f"record {relative} not found (looked for {path})")
        return path

    def json(self, relative: str):
        """The parsed JSON file `relative` (to the repository root)."""
        key = ("json", relative)
        self._note(relative)
        if key not in self._cache:
            path = self.path(relative)
            try:
                self._cache[key] = json.loads(path.read_text(encoding="utf-8"))
            except ValueError as error:
                raise RecordError(f"record {relative} is not valid JSON: {error}") from None
        return self._cache[key]

    def csv(self, relative: str) -> list[dict[str, str]]:
        """The rows of the CSV file `relative` as dicts of strings."""
        key = ("csv", relative)
        self._note(relative)
        if key not in self._cache:
            with self.path(relative).open(newline="", encoding="utf-8") as file:
                self._cache[key] = list(csv.DictReader(file))
        return self._cache[key]

    def text(self, relative: str) -> str:
        return self.path(relative).read_text(encoding="utf-8")

    def glob(self, pattern: str) -> list[str]:
        """Paths (relative, sorted) of the files matching `pattern`; may be empty."""
        return sorted(p.relative_to(self.root).as_posix() for p in self.root.glob(pattern) if p.is_file())


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- begin: {name} -->", f"<!-- end: {name} -->"


def replace_block(text: str, name: str, content: str, target: str = "the file") -> str:
    """`text` with everything between the markers of `name` replaced by
    `content` (one line break after the begin marker and before the end
    marker)."""
    begin, end = _markers(name)
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    found = pattern.findall(text)
    if len(found) != 1:
        problem = "has no" if not found else f"has {len(found)} pairs of"
        raise MarkerError(f"{target} {problem} markers `{begin}` ... `{end}`")
    body = content.strip("\n")
    return pattern.sub(lambda _: f"{begin}\n{body}\n{end}", text, count=1)


def render(root: Path | str = ROOT, blocks: list[Block] | None = None) -> dict[str, tuple[str, str, list[str]]]:
    """{target: (current text, new text, names of the blocks that change)}."""
    root = Path(root)
    records = Records(root)
    results: dict[str, tuple[str, str, list[str]]] = {}
    for block in BLOCKS if blocks is None else blocks:
        path = root / block.target
        if block.target not in results:
            if not path.is_file():
                raise MarkerError(f"{block.target} not found (target of block {block.name!r})")
            current = path.read_text(encoding="utf-8")
            results[block.target] = (current, current, [])
        current, text, changed = results[block.target]
        before = text
        records.read = []
        try:
            content = block.builder(records)
        except (KeyError, IndexError, TypeError, ValueError, ZeroDivisionError) as error:
            # A record that parses but lacks a field or has a wrong value.
            read = ", ".join(records.read) or "no record"
            raise RecordError(f"block {block.name!r} of {block.target}: a record it reads ({read}) lacks a field "
                              f"or has a bad value: {type(error).__name__}: {error}") from error
        text = replace_block(text, block.name, content, block.target)
        if text != before:
            changed = changed + [block.name]
        results[block.target] = (current, text, changed)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.reports",
        description="Rebuild every generated block of README.md and reports/ from the committed records.")
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 naming every block that is out of date")
    parser.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        results = render(args.root)
    except (RecordError, MarkerError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    stale = [(target, name) for target, (_, _, names) in results.items() for name in names]
    if args.check:
        for target, name in stale:
            print(f"out of date: {target} block {name!r}")
        if stale:
            print("run `python -m pipelines.reports` and commit the result", file=sys.stderr)
            return 1
        print(f"{len(BLOCKS)} blocks up to date")
        return 0
    for target, (current, text, names) in results.items():
        if text != current:
            write_text_atomically(args.root / target, text)
            print(f"updated {target}: {', '.join(names)}")
    if not stale:
        print(f"{len(BLOCKS)} blocks already up to date")
    return 0


# Formatting -------------------------------------------------------------------


def _f(value, digits=2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _spread(values, digits=2) -> str:
    """`median (min-max)` of a list, or the value alone when there is one."""
    if not values:
        return "-"
    if len(values) == 1:
        return _f(values[0], digits)
    return f"{_f(statistics.median(values), digits)} ({_f(min(values), digits)}-{_f(max(values), digits)})"


# Benchmarks (benchmarks/results/*.json, written by benchmarks/bench_moe.py) ----

BENCH = "benchmarks/results"
BENCH_FILES = {
    "tensorflow": ("cpu_tf_dense.json", "cpu_tf.json"),
    "jax": ("cpu_jax_dense.json",),
}
BACKEND_NAMES = {"tensorflow": "TensorFlow (XLA)", "jax": "JAX", "torch": "PyTorch"}
TARGETS = {"vs_n8": 1.3, "vs_base": 1.5}


def passes(row: dict, metric: str) -> list[float]:
    """Every pass's time of `metric` ("ms" or "fwd_bwd_ms") for a row; a
    single-pass run has its one time."""
    if f"{metric}_passes" in row:
        return list(row[f"{metric}_passes"])
    return [] if row.get(metric) is None else [row[metric]]


def _find(rows, layer, dispatch, n, k):
    for row in rows:
        if (row["layer"], row["dispatch"], row["n"], row["k"]) == (layer, dispatch, n, k):
            return row
    return None


def sparse_ratios(run: dict, metric: str, k: int, n: int = 64) -> dict[str, list[float]]:
    """Per pass: sparse MoEDense at `n` over n=8 (`vs_n8`) and over the
    equal-active Dense (`vs_base`), for `metric` at top-`k`. Passes of one
    file are whole sweeps, so pass i of one row pairs with pass i of another."""
    rows = run["rows"]
    top, n8 = _find(rows, "MoEDense", "sparse", n, k), _find(rows, "MoEDense", "sparse", 8, k)
    base = _find(rows, "Dense", "baseline", None, k)
    if top is None or n8 is None or base is None:
        return {"vs_n8": [], "vs_base": []}
    top, n8, base = passes(top, metric), passes(n8, metric), passes(base, metric)
    return {"vs_n8": [a / b for a, b in zip(top, n8)], "vs_base": [a / b for a, b in zip(top, base)]}


def target_runs(records: Records, backend: str, metric: str, k: int) -> dict[str, list[float]]:
    """Every committed pass of a backend, all files together."""
    found = {"vs_n8": [], "vs_base": []}
    for name in BENCH_FILES[backend]:
        for key, values in sparse_ratios(records.json(f"{BENCH}/{name}"), metric, k).items():
            found[key] += values
    return found


def _target_cell(values, target) -> str:
    if not values:
        return "-"
    within = sum(v <= target for v in values)
    return f"{_spread(values)}; {within} of {len(values)} within"


def targets_table(records: Records) -> str:
    header = ["sparse `MoEDense`, n=64", "runs", "n=64 / n=8, k=1", "k=2",
              "n=64 / equal-active Dense, k=1", "k=2"]
    rows = [("target", "", *(f"<= {TARGETS[key]}" for key in ("vs_n8", "vs_n8", "vs_base", "vs_base")))]
    for metric, label in (("fwd_bwd_ms", "forward+backward"), ("ms", "training step")):
        for backend in BENCH_FILES:
            by_k = {k: target_runs(records, backend, metric, k) for k in (1, 2)}
            files = " + ".join(f"`{n}`" for n in BENCH_FILES[backend])
            rows.append((f"{BACKEND_NAMES[backend]}, {label}", f"{len(by_k[1]['vs_n8'])} ({files})",
                         *(_target_cell(by_k[k][key], TARGETS[key]) for key in ("vs_n8", "vs_base") for k in (1, 2))))
    return markdown_table(header, [rows[0], *rows[1:]])


@report_block("README.md", "speed-targets")
@report_block("benchmarks/README.md", "targets")
def speed_targets(records: Records) -> str:
    first = records.json(f"{BENCH}/{BENCH_FILES['tensorflow'][0]}")
    config = first["config"]
    return "\n".join([
        targets_table(records),
        "",
        f"Each cell: the median over every committed run (one run = one pass of "
        f"`benchmarks/bench_moe.py`; a file made with `--repeats 3` holds three), the range in "
        f"brackets, and how many runs meet the target. CPU, {config['tokens']:,} tokens of "
        f"{config['features']} features, expert hidden {config['hidden']}, capacity factor "
        f"{config['capacity_factor']}; records in `{BENCH}/`. Generated by `python -m pipelines.reports`.",
    ])


def _cell_ms(row: dict, metric: str) -> str:
    values = passes(row, metric)
    return "-" if not values else _spread(values)


def bench_table(run: dict) -> str:
    header = ["layer", "dispatch", "n", "k", "fwd+bwd ms", "vs_base", "vs_n8",
              "step ms", "vs_base", "vs_n8", "auto"]
    rows = []
    for r in run["rows"]:
        rows.append((r["layer"], r["dispatch"], "-" if r["n"] is None else r["n"],
                     "-" if r["k"] is None else r["k"],
                     _cell_ms(r, "fwd_bwd_ms"), _f(r.get("fwd_bwd_vs_baseline")), _f(r.get("fwd_bwd_vs_n8")),
                     _cell_ms(r, "ms"), _f(r.get("vs_baseline")), _f(r.get("vs_n8")),
                     "picked" if r.get("auto_picks") else ""))
    return markdown_table(header, rows)


def machine_line(run: dict) -> str:
    m = run["machine"]
    versions = ", ".join(f"{label} {m[key]}" for key, label in
                         (("python", "Python"), ("keras", "Keras"), ("tensorflow", "TensorFlow"), ("jax", "JAX"))
                         if m.get(key))
    return (f"{m.get('platform', 'platform not recorded')}, {m.get('cpu_count', '?')} CPU cores, "
            f"device {m.get('device', '?')}, backend {m.get('backend', '?')}; {versions}")


def auto_lines(run: dict) -> list[str]:
    """Where `dispatch="auto"`'s pick was not the faster measured step."""
    groups: dict[tuple, list[dict]] = {}
    for r in run["rows"]:
        if "auto_picks" in r:
            groups.setdefault((r["layer"], r["n"], r["k"]), []).append(r)
    misses = []
    for (layer, n, k), measured in groups.items():
        if len(measured) < 2:
            continue
        fastest = min(measured, key=lambda r: r["ms"])
        if not fastest["auto_picks"]:
            picked = next(r for r in measured if r["auto_picks"])
            misses.append(f"{layer} n={n} k={k} ({picked['dispatch']} {picked['ms']:.1f} ms, "
                          f"{fastest['dispatch']} {fastest['ms']:.1f} ms)")
    pairs = sum(len(m) >= 2 for m in groups.values())
    if not misses:
        return [f"`dispatch=\"auto\"` picked the faster training step in all {pairs} cases measured with both dispatches."]
    return [f"`dispatch=\"auto\"` picked the faster training step in {pairs - len(misses)} of {pairs} cases "
            f"measured with both dispatches; not in: {'; '.join(misses)}."]


def _bench_block(name: str, title_note: str):
    def build(records: Records) -> str:
        run = records.json(f"{BENCH}/{name}")
        repeats = run["config"].get("repeats", 1)
        how = (f"median of {repeats} passes, range in brackets" if repeats > 1
               else "one pass")
        return "\n".join([
            f"`{BENCH}/{name}` ({title_note}; {how}; {run['config']['steps']} timed steps per time). "
            f"Machine: {machine_line(run)}.",
            "",
            bench_table(run),
            "",
            *auto_lines(run),
        ])

    build.__name__ = f"bench_{name.removesuffix('.json')}"
    return build


for _name, _note in (("cpu_tf_dense.json", "TensorFlow, `MoEDense`"),
                     ("cpu_tf.json", "TensorFlow, `MoEDense`, `MoEConv2D` and the pipeline's epochs"),
                     ("cpu_jax_dense.json", "JAX, `MoEDense`"),
                     ("cpu_jax_conv.json", "JAX, `MoEConv2D`")):
    report_block("benchmarks/README.md", _name.removesuffix(".json").replace("_", "-"))(_bench_block(_name, _note))


# The router-saturation diagnostic (reports/router_saturation.csv) --------------


@report_block("reports/router_saturation.md", "router-saturation")
def router_saturation(records: Records) -> str:
    rows = []
    for r in records.csv("reports/router_saturation.csv"):
        weights = r["mixing_weights"].split()  # as the CSV holds them (4 decimals)
        rows.append((r["model"], r["epoch"], f"{100 * float(r['train_accuracy']):.1f}",
                     f"{100 * float(r['validation_accuracy']):.1f}",
                     f"{float(r['logit_std']):.2f}" if r["logit_std"] else "-",
                     " / ".join(weights) if weights else "-"))
    return markdown_table(["model", "epoch", "train acc %", "val acc %", "router logit std",
                           "mean mixing weights (1st / 2nd / 3rd expert)"], rows)


@report_block("README.md", "router-saturation-summary")
def router_saturation_summary(records: Records) -> str:
    rows = records.csv("reports/router_saturation.csv")
    last = {r["model"]: r for r in rows if r["epoch"] == max(x["epoch"] for x in rows)}

    def find(word):
        return next(r for model, r in last.items() if word(model))

    linear = find(lambda m: "linear router" in m and "z-loss" not in m)
    zloss = find(lambda m: "z-loss" in m)
    cosine = find(lambda m: "cosine" in m)

    def mix(r):
        return " / ".join(f"{float(w):.2f}" for w in r["mixing_weights"].split())

    return (f"After epoch {linear['epoch']} of `reports/router_saturation.csv` (seed 0, one run each), the "
            f"linear router's logits had a standard deviation of {float(linear['logit_std']):.1f} and "
            f"MoE(3,5) mixed its three experts {mix(linear)}, in effect top-1; with a z-loss of 1e-2 the "
            f"standard deviation was {float(zloss['logit_std']):.1f} and the mix {mix(zloss)}. The cosine "
            f"router's logits stayed at {float(cosine['logit_std']):.1f} and it mixed {mix(cosine)}.")


# The MoE study (reports/*.csv, written by `python -m pipelines.experiments`) --


def _num(value: str):
    return None if value in ("", None) else float(value)


def _pct(mean, std=None) -> str:
    return f"{100 * mean:.2f}" if std is None else f"{100 * mean:.2f} ± {100 * std:.2f}"


def _pm(mean, std, digits=3) -> str:
    return f"{round(mean, digits) + 0.0:.{digits}f} ± {std:.{digits}f}"


def welch(rows, column, a, b, value="test_accuracy") -> str:
    """`+0.33 pp (Welch p=0.59)`: mean of `b` minus mean of `a` over seeds."""
    first = [float(r[value]) for r in rows if r[column] == a]
    second = [float(r[value]) for r in rows if r[column] == b]
    difference = statistics.fmean(second) - statistics.fmean(first)
    if len(first) < 2 or len(second) < 2:
        p = "n/a"
    else:
        from scipy import stats

        p = f"{float(stats.ttest_ind(second, first, equal_var=False).pvalue):.2g}"
    return f"{100 * difference:+.2f} pp (Welch p={p})"


@report_block("reports/moe_study.md", "study-params")
def study_params(records: Records) -> str:
    rows = [(r["config"], f"{int(float(r['params_total_mean'])):,}", f"{int(float(r['params_active_mean'])):,}")
            for r in records.csv("reports/experts_summary.csv")]
    return markdown_table(["model", "total", "active per input"], rows)


@report_block("reports/moe_study.md", "study-commands")
def study_commands(records: Records) -> str:
    runs = [r for r in records.csv("reports/run_log.csv") if r["quick"].strip().lower() != "true"]
    last: dict[str, dict] = {}
    for r in runs:  # a re-run replaces an experiment's CSVs: its last command counts
        last.pop(r["experiment"], None)
        last[r["experiment"]] = r
    return markdown_table(["command", "wall s", "finished (UTC)"],
                          [(f"`{r['command']}`", r["wall_seconds"], r["finished_utc"]) for r in last.values()])


@report_block("reports/moe_study.md", "study-collapse")
def study_collapse(records: Records) -> str:
    summary = records.csv("reports/collapse_summary.csv")
    frame = records.csv("reports/collapse.csv")
    epochs = records.csv("reports/collapse_epochs.csv")
    load_columns = sorted((c for c in epochs[0] if c.startswith("moe_load_")), key=lambda c: int(c.split("_")[-1]))
    last: dict[tuple, dict] = {}
    for r in epochs:
        key = (r["config"], r["seed"])
        if key not in last or int(r["epoch"]) >= int(last[key]["epoch"]):
            last[key] = r
    ranked: dict[str, list[list[float]]] = {}
    for (config, _), r in last.items():
        ranked.setdefault(config, []).append(sorted((float(r[c]) for c in load_columns), reverse=True))
    reference = {0.0: "27/4/70%, H=0.721", 0.01: "34/33/34%, H=1.099"}
    rows = []
    for r in summary:
        loads = [statistics.fmean(column) for column in zip(*ranked[r["config"]])]
        rows.append((r["config"], "/".join(f"{100 * v:.0f}" for v in loads) + "%",
                     _pm(float(r["final_entropy_mean"]), float(r["final_entropy_std"])),
                     _pm(float(r["final_max_load_ratio_mean"]), float(r["final_max_load_ratio_std"]), 2),
                     _pct(float(r["test_accuracy_mean"]), float(r["test_accuracy_std"])),
                     reference.get(float(r["alpha"]), "-")))
    table = markdown_table(["Switch", "load at last epoch (busiest/…/least)", "entropy (nats, max 1.099)",
                            "max load / ideal", "test acc %", "reference study"], rows)
    claims = []
    for inputs in dict.fromkeys(r["inputs"] for r in summary):
        group = [r for r in summary if r["inputs"] == inputs]
        none = next(r for r in group if float(r["alpha"]) == 0.0)
        busiest = statistics.fmean(x[0] for x in ranked[none["config"]])
        claims.append(f"- {inputs} inputs, no balancing: the busiest expert ends with {100 * busiest:.0f}% of the "
                      f"inputs (reference: 70%), load entropy {max(0.0, float(none['final_entropy_mean'])):.3f} of "
                      f"a possible {math.log(3):.3f} nats (reference 0.721).")
        for r in group:
            if float(r["alpha"]) != 0.0:
                claims.append(f"- {inputs} inputs, Switch alpha={float(r['alpha']):g} vs alpha=0: test accuracy "
                              f"{welch(frame, 'config', none['config'], r['config'])}.")
    return "\n".join([table, "", *claims])


@report_block("reports/moe_study.md", "study-balancing")
def study_balancing(records: Records) -> str:
    summary, frame = records.csv("reports/balancing_summary.csv"), records.csv("reports/balancing.csv")
    rows = [(r["config"], _pm(float(r["final_entropy_mean"]), float(r["final_entropy_std"])),
             _pm(float(r["final_max_load_ratio_mean"]), float(r["final_max_load_ratio_std"]), 2),
             f"{float(r['final_dead_experts_mean']):.1f}",
             _pct(float(r["test_accuracy_mean"]), float(r["test_accuracy_std"])),
             welch(frame, "config", "none", r["config"]) if r["config"] != "none" else "-",
             f"{float(r['epoch_seconds_mean']):.2f}") for r in summary]
    best = max(summary, key=lambda r: float(r["final_entropy_mean"]))
    return "\n".join([
        markdown_table(["method", "entropy at last epoch (nats)", "max load / ideal", "dead experts", "test acc %",
                        "acc vs none", "s / epoch"], rows),
        "",
        f"Most balanced: {best['config']} (entropy {float(best['final_entropy_mean']):.3f} of {math.log(3):.3f}).",
    ])


REFERENCE_MNIST = {"baseline": 97.52, 2: 97.34, 3: 96.50, 4: 96.09, 8: 95.92}


@report_block("reports/moe_study.md", "study-experts")
def study_experts(records: Records) -> str:
    summary, frame = records.csv("reports/experts_summary.csv"), records.csv("reports/experts.csv")
    rows = []
    for r in summary:
        is_base = r["model"] == "baseline"
        key = "baseline" if is_base else (int(float(r["num_experts"])) if int(float(r["top_k"])) == 1 else None)
        reference = REFERENCE_MNIST.get(key)
        rows.append((r["config"], _pct(float(r["test_accuracy_mean"]), float(r["test_accuracy_std"])),
                     _pct(float(r["train_accuracy_mean"])), _pct(float(r["val_accuracy_mean"])),
                     "-" if is_base else welch(frame, "config", "baseline", r["config"]),
                     f"{int(float(r['params_total_mean'])):,}", f"{int(float(r['params_active_mean'])):,}",
                     f"{float(r['epoch_seconds_mean']):.2f}", f"{float(r['best_epoch_mean']):.1f}",
                     "-" if reference is None else f"{reference:.2f}"))
    base = next(r for r in summary if r["model"] == "baseline")
    trend = ", ".join(f"n={int(float(r['num_experts']))}: {_pct(float(r['test_accuracy_mean']))}"
                      for r in summary if r["model"] == "moe" and int(float(r["top_k"])) == 1)
    return "\n".join([
        markdown_table(["config", "test acc %", "train acc % (best epoch)", "val acc %", "vs baseline",
                        "params total", "active / input", "s / epoch", "best epoch", "reference MNIST (k=1)"], rows),
        "",
        f"Dense baseline: {_pct(float(base['test_accuracy_mean']), float(base['test_accuracy_std']))}. MoE k=1 by n: "
        f"{trend} (reference, full MNIST: 97.52 baseline; 97.34, 96.50, 96.09, 95.92 for n = 2, 3, 4, 8).",
    ])


@report_block("reports/moe_study.md", "study-datasets")
def study_datasets(records: Records) -> str:
    summary, frame = records.csv("reports/datasets_summary.csv"), records.csv("reports/datasets.csv")
    rows = []
    for r in summary:
        part = [x for x in frame if x["dataset"] == r["dataset"]]
        rows.append((r["dataset"], r["config"], _pct(float(r["test_accuracy_mean"]), float(r["test_accuracy_std"])),
                     "-" if r["config"] == "baseline" else welch(part, "config", "baseline", r["config"]),
                     f"{float(r['epoch_seconds_mean']):.2f}"))
    return markdown_table(["dataset", "model", "test acc %", "vs baseline", "s / epoch"], rows)


@report_block("reports/moe_study.md", "study-gating")
def study_gating(records: Records) -> str:
    summary, frame = records.csv("reports/gating_summary.csv"), records.csv("reports/gating.csv")
    first = summary[0]["config"]
    rows = [(r["config"], _pm(float(r["final_entropy_mean"]), float(r["final_entropy_std"])),
             _pm(float(r["final_max_load_ratio_mean"]), float(r["final_max_load_ratio_std"]), 2),
             _pct(float(r["test_accuracy_mean"]), float(r["test_accuracy_std"])),
             "-" if r["config"] == first else welch(frame, "config", first, r["config"])) for r in summary]
    return markdown_table(["gate", "entropy at last epoch (nats)", "max load / ideal", "test acc %", "vs gate=p"], rows)


# The digit-recognizer pipeline (reports/records/digit_recognizer/*.json) ------

PIPELINE_RECORDS = "reports/records/digit_recognizer"


def _model_name(config: dict) -> str:
    moe = config.get("moe")
    return f"MoE({moe[0]},{moe[1]})" if moe else "dense"


def _trunk(config: dict) -> str:
    """The cnn's trunk; runs recorded before `ModelConfig.trunk` existed
    used max-pooling."""
    if config.get("arch", "cnn") != "cnn":
        return "-"
    return config.get("trunk", "pool")


def pipeline_table(runs: list[dict]) -> str:
    """One row per run record written by `pipelines.train` (committed
    copies of `submissions/<run>.json`)."""
    rows = []
    # Ensemble records (`kind: "ensemble"`) average member runs listed here.
    for run in (r for r in runs if r.get("kind") != "ensemble"):
        config = run["model_config"]
        test = run.get("test_accuracy")
        rows.append((run["_set"], run["name"], _model_name(config), config["hidden"], _trunk(config), run["seed"],
                     f"{100 * run['train_accuracy']:.2f}", f"{100 * run['validation_accuracy']:.2f}",
                     "-" if test is None else f"{100 * test:.1f}",
                     f"{run['params_total']:,} / {run['params_active']:,}", run["epochs_run"],
                     f"{run['wall_time_s']:.0f}",
                     f"{run['versions'].get('backend', '?')}, {run['machine'].get('cpu_count', '?')} cores, "
                     f"{run['machine'].get('accelerator') or 'no accelerator'}"))
    return markdown_table(["set", "run", "model", "hidden", "trunk", "seed", "train %", "validation %",
                           "held-out 1,000 %", "params total / active", "epochs", "time (s)", "machine"], rows)


@report_block("reports/digit_recognizer_grid.md", "pipeline-runs")
def pipeline_runs(records: Records) -> str:
    paths = records.glob(f"{PIPELINE_RECORDS}/**/*.json")
    if not paths:
        return (f"No run of the pipeline is recorded under `{PIPELINE_RECORDS}/` yet, so this report "
                "quotes no accuracy and no time.")
    # The folder a record sits in names the set it belongs to (default, grid, options).
    return pipeline_table([{**records.json(p), "_set": p[len(PIPELINE_RECORDS) + 1:].rpartition("/")[0] or "-"}
                           for p in paths])


# Peers (benchmarks/results/peers_*.json, written by benchmarks/bench_peers.py) --

PEER_FILES = {"tensorflow": "peers_cpu_tf.json", "jax": "peers_cpu_jax.json"}
PEER_TARGETS = (
    # (what, metric, model over baseline, at most / at least, bound)
    ("train step over the equal-active Dense FFN", "train_ms", "dense_ffn", "<=", 1.3),
    ("predict over the equal-active Dense FFN", "predict_ms", "dense_ffn", "<=", 1.2),
    ("train step, n=64 over n=8", "train_ms", "n8", "<=", 1.15),
    ("predict, n=64 over n=8", "predict_ms", "n8", "<=", 1.15),
    ("KerasHub's train step over ours", "train_ms", "keras_hub_mixtral", ">=", 20.0),
    ("KerasHub's predict over ours", "predict_ms", "keras_hub_mixtral", ">=", 20.0),
)


def _peer_row(run, model, n, k):
    for row in run["rows"]:
        if row["model"] == model and row["k"] == k and (row["n"] == n or model.startswith("dense_ffn")):
            return row
    return None


def _pass_ratios(numerator, denominator, metric):
    """Ratios pass by pass (the passes interleave the models); with a
    single-pass side, its one time against every pass of the other."""
    top, bottom = numerator[metric], denominator[metric]
    if len(top) == len(bottom):
        return [a / b for a, b in zip(top, bottom)]
    return [a / b for a in top for b in bottom]


def _ms(row, metric):
    return "-" if row is None else _spread(row[metric], 0 if statistics.median(row[metric]) >= 100 else 1)


def _cores(machine: dict) -> str:
    """A benchmark record's machine, as its table headings name it."""
    return f"{machine['cpu_count']} CPU cores, {machine['accelerator'] or 'no accelerator'}"


def _load(run: dict) -> str:
    load = run.get("load_average")
    return "not recorded" if not load else f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at the end"


def peer_table(run: dict) -> str:
    header = ["n", "k", "Dense FFN train / predict (ms)", "MoEDense defaults train / predict (ms)",
              "vs Dense FFN (train / predict)", "MoEDense cf 1.25 train / predict (ms)",
              "KerasHub Mixtral train / predict (ms)", "KerasHub over ours (train / predict)",
              "peak predict memory MB (ours / KerasHub)"]
    rows = []
    experts = sorted({row["n"] for row in run["rows"]})
    for n in experts:
        for k in sorted({row["k"] for row in run["rows"]}):
            ffn = _peer_row(run, "dense_ffn", n, k)
            ours = _peer_row(run, "moe_default", n, k)
            capped = _peer_row(run, "moe_cf1.25", n, k)
            hub = _peer_row(run, "keras_hub_mixtral", n, k)
            if ours is None:
                continue
            versus = " / ".join(_spread(_pass_ratios(ours, ffn, m)) for m in ("train_ms", "predict_ms")) if ffn else "-"
            hub_ratio = " / ".join(f"{_spread(_pass_ratios(hub, ours, m), 0)}x" for m in ("train_ms", "predict_ms")) if hub else "-"
            memory = "-"
            if ours.get("predict_peak_rss_mb") is not None and hub and hub.get("predict_peak_rss_mb") is not None:
                memory = f"{ours['predict_peak_rss_mb']:.0f} / {hub['predict_peak_rss_mb']:.0f}"
            rows.append([n, k, f"{_ms(ffn, 'train_ms')} / {_ms(ffn, 'predict_ms')}",
                         f"{_ms(ours, 'train_ms')} / {_ms(ours, 'predict_ms')}", versus,
                         f"{_ms(capped, 'train_ms')} / {_ms(capped, 'predict_ms')}",
                         f"{_ms(hub, 'train_ms')} / {_ms(hub, 'predict_ms')}", hub_ratio, memory])
    return markdown_table(header, rows)


def peer_verdicts(run: dict, n: int = 64, k: int = 2) -> list[str]:
    """One line per target at `n`, `k`: the median ratio over passes, its
    range, and met or missed."""
    ours = _peer_row(run, "moe_default", n, k)
    lines = []
    for what, metric, baseline, sense, bound in PEER_TARGETS:
        if baseline == "n8":
            base, top = _peer_row(run, "moe_default", 8, k), ours
        elif baseline == "keras_hub_mixtral":
            base, top = ours, _peer_row(run, baseline, n, k)
        else:
            base, top = _peer_row(run, baseline, n, k), ours
        if base is None or top is None:
            continue
        ratios = _pass_ratios(top, base, metric)
        median = statistics.median(ratios)
        met = median <= bound if sense == "<=" else median >= bound
        lines.append(f"{what}: {_spread(ratios)} (target {sense} {bound}): {'met' if met else 'missed'}")
    return lines


def peer_floors(run: dict, n: int = 64, k: int = 2) -> list[str]:
    """What the weights alone cost at `n`, `k` (`bench_peers.py --floors`),
    and the lowest ratio to the Dense FFN (and to n=8) that this leaves:
    the Dense FFN's own time plus what updating, or reading, the MoE's
    larger weights costs beyond the baseline's. Empty for records without
    the floor timings."""
    ours = _peer_row(run, "moe_default", n, k)
    small = _peer_row(run, "moe_default", 8, k)
    ffn = _peer_row(run, "dense_ffn", n, k)
    if ours is None or ffn is None or not ours.get("sgd_update_ms") or not ffn.get("sgd_update_ms"):
        return []
    med = {key: {metric: statistics.median(row[metric]) for metric in
                 ("train_ms", "predict_ms", "sgd_update_ms", "weights_read_ms")}
           for key, row in (("ours", ours), ("ffn", ffn), ("n8", small)) if row is not None}
    lines = []
    for step, floor_metric, verb in (("train_ms", "sgd_update_ms", "an SGD update of"),
                                     ("predict_ms", "weights_read_ms", "one read of")):
        extra = med["ours"][floor_metric] - med["ffn"][floor_metric]
        floor = (med["ffn"][step] + extra) / med["ffn"][step]
        line = (f"{verb} the MoE's {ours['params']:,} weights alone: {_f(med['ours'][floor_metric], 1)} ms, "
                f"against {_f(med['ffn'][floor_metric], 1)} ms for the Dense FFN's {ffn['params']:,}; "
                f"the Dense FFN's {'train step' if step == 'train_ms' else 'predict'} plus the difference "
                f"is {_f(floor)}x the Dense FFN's")
        if "n8" in med:
            extra_n8 = med["ours"][floor_metric] - med["n8"][floor_metric]
            line += (f"; n=8's plus the difference from n=8's weights is "
                     f"{_f((med['n8'][step] + extra_n8) / med['n8'][step])}x n=8's")
        lines.append(line)
    return lines


def committed_runs(records: Records, files: dict[str, str]):
    """`(backend, path, record)` of each of `files` (backend -> file name in
    `benchmarks/results/`) that is committed; the others are skipped."""
    present = set(records.glob(f"{BENCH}/*.json"))
    for backend, name in files.items():
        path = f"{BENCH}/{name}"
        if path in present:
            yield backend, path, records.json(path)


@report_block("README.md", "peers")
@report_block("benchmarks/README.md", "peers")
def peers(records: Records) -> str:
    parts = []
    for backend, path, run in committed_runs(records, PEER_FILES):
        config = run["config"]
        machine = run["machine"]
        versions = run["versions"]
        parts.append(
            f"**{BACKEND_NAMES.get(backend, backend).replace(' (XLA)', '')}** "
            f"(`{path}`; tokens ({config['batch']}, {config['seq']}, {config['features']}), "
            f"expert hidden {config['hidden']}; {_cores(machine)}; Keras {versions['keras']}; "
            f"{run['timings']['total_s']:.0f} s in all; load average {_load(run)}). "
            f"Median over {config['repeats']} interleaved passes "
            f"of {config['steps']} timed calls, range in brackets; KerasHub above n={config['peer_max_repeats_experts']} "
            "timed in one pass."
        )
        parts.append(peer_table(run))
        parts.append("At n=64, k=2:\n\n" + "\n".join(f"- {line}" for line in peer_verdicts(run)))
        floors = peer_floors(run)
        if floors:
            parts.append(
                "What the weights alone cost at n=64, k=2 (`--floors`; each compiled on its own, "
                "median over the passes), whatever the dispatch:\n\n"
                + "\n".join(f"- {line}" for line in floors))
    if not parts:
        return "No peer benchmark record is committed yet (`benchmarks/bench_peers.py --json`)."
    parts.append("Generated by `python -m pipelines.reports` from the records.")
    return "\n\n".join(parts)


PEER_TF_BUFFERS_FILE = f"{BENCH}/peers_cpu_tf_buffers.json"


def peer_engine_table(before: dict, after: dict) -> str:
    """One row per `n`, `k` of both peer records: `MoEDense` defaults' train
    step and predict in each, and each over its own run's Dense FFN."""
    rows = []
    for row in after["rows"]:
        if row["model"] != "moe_default":
            continue
        n, k = row["n"], row["k"]
        old = _peer_row(before, "moe_default", n, k)
        if old is None:
            continue
        cells = [n, k]
        for metric in ("train_ms", "predict_ms"):
            versus = [_spread(_pass_ratios(ours, _peer_row(run, "dense_ffn", n, k), metric))
                      for ours, run in ((old, before), (row, after))]
            cells += [f"{_ms(old, metric)} / {_ms(row, metric)}", " / ".join(versus)]
        rows.append(cells)
    return markdown_table(["n", "k", "train step ms (buffers / rows)", "train step over Dense FFN (buffers / rows)",
                           "predict ms (buffers / rows)", "predict over Dense FFN (buffers / rows)"], rows)


@report_block("README.md", "peers-tf-engines")
@report_block("benchmarks/README.md", "peers-tf-engines")
def peers_tf_engines(records: Records) -> str:
    after, before = f"{BENCH}/{PEER_FILES['tensorflow']}", PEER_TF_BUFFERS_FILE
    if not (records.glob(after) and records.glob(before)):
        return f"Not measured yet (`{before}` and `{after}` are not both committed)."
    old, new = records.json(before), records.json(after)
    return (f"**TensorFlow**, `MoEDense` defaults: buffers padded to the busiest expert (`{before}`, "
            f"`{old['command']}`; load average {_load(old)}) against each expert on its own rows (`{after}`; "
            f"load average {_load(new)}), "
            f"the same benchmark run one after the other on one machine ({_cores(new['machine'])}); each "
            "ratio is over the Dense FFN of its own run, pass by pass, median and range.\n\n"
            + peer_engine_table(old, new))


# The dropless path piece by piece (benchmarks/profile_dropless.py) -------------

PROFILE_FILE = f"{BENCH}/profile_dropless_cpu_tf.json"


def profile_table(run: dict) -> str:
    """One row per expert count and mode: each piece's median over the
    passes, range in brackets."""
    rows = []
    for row in run["rows"]:
        rows.append([row["n"], row["k"], row["mode"], f"{row['busiest_over_mean']:.2f}",
                     *(_ms(row, piece) for piece in ("dense_ffn", "layer", "route", "sort_permute",
                                                      "experts_on_rows", "mixture", "plain_matmuls")),
                     _spread([a / b for a, b in zip(row["layer"], row["dense_ffn"])]),
                     _spread([a / b for a, b in zip(row["experts_on_rows"], row["plain_matmuls"])])])
    return markdown_table(["n", "k", "mode", "busiest expert over mean", "Dense FFN ms", "MoEDense ms", "route ms",
                           "sort, permute ms", "experts on rows ms", "mixture (sort to unpermute) ms",
                           "plain matmuls, same FLOPs ms", "MoEDense over Dense FFN",
                           "experts over plain matmuls"], rows)


def _profile_setup(path: str, run: dict) -> str:
    """The record, token shape and machine of a profile record, for its heading."""
    config = run["config"]
    return (f"`{path}`; {config['tokens']:,} tokens of {config['features']}, expert hidden {config['hidden']}; "
            f"{_cores(run['machine'])}")


@report_block("benchmarks/README.md", "profile-dropless")
@report_block("README.md", "profile-dropless")
def profile_dropless(records: Records) -> str:
    if not records.glob(PROFILE_FILE):
        return f"Not measured yet (`{PROFILE_FILE}` is not committed)."
    run = records.json(PROFILE_FILE)
    config = run["config"]
    return (f"**TensorFlow** ({_profile_setup(PROFILE_FILE, run)}; load average {_load(run)}). "
            f"Median over {config['repeats']} passes of the median of {config['steps']} calls, range in "
            "brackets; `train` times each piece with its gradients.\n\n" + profile_table(run))


BRANCHES_FILE = f"{BENCH}/profile_branches_cpu_jax.json"
BRANCH_VARIANTS = ("taken_rung", "two_rungs", "ladder", "ladder_and_overflow", "layer")


@report_block("benchmarks/README.md", "profile-branches")
def profile_branches(records: Records) -> str:
    if not records.glob(BRANCHES_FILE):
        return f"Not measured yet (`{BRANCHES_FILE}` is not committed)."
    run = records.json(BRANCHES_FILE)
    rows = [[row["n"], row["k"], row["busiest"], row["taken_rung"], ", ".join(map(str, row["ladder"])),
             row["allocator"], *(f"{row['ms'][v]:.1f}" for v in BRANCH_VARIANTS)] for row in run["rows"]]
    table = markdown_table(["n", "k", "busiest expert", "taken rung", "ladder", "allocator",
                            *(f"{v.replace('_', ' ')} ms" for v in BRANCH_VARIANTS)], rows)
    return (f"**JAX, inference** ({_profile_setup(BRANCHES_FILE, run)}). One process per row, median of "
            f"{run['config']['steps']} jitted calls, one pass.\n\n" + table)


# Kernels (benchmarks/results/kernels_*.json, written by benchmarks/bench_kernels.py) --

# PyTorch's record (`kernels_cpu_torch.json`) timed the dispatch table alone,
# since superseded by `DISPATCH_FILES`: no grouped kernels to show.
KERNEL_FILES = {"tensorflow": "kernels_cpu_tf.json", "jax": "kernels_cpu_jax.json"}


def kernel_tables(run: dict) -> str:
    """A `bench_kernels.py` record's grouped rows: each kernel on sorted
    rows against the plain matmul of the same FLOPs."""
    grouped = [r for r in run["rows"] if r["table"] == "grouped"]
    plain = {r["n"]: r for r in grouped if r["kernel"] == "plain_matmul"}
    rows = [[r["n"], r["kernel"], _spread(r["fwd_bwd_ms"], 1),
             _spread(_pass_ratios({"t": r["fwd_bwd_ms"]}, {"t": plain[r["n"]]["fwd_bwd_ms"]}, "t")),
             _f(r["busiest_over_mean"])] for r in grouped]
    return markdown_table(["n", "kernel", "fwd+bwd ms", "over the plain matmul", "busiest / mean load"], rows)


def dispatch_table(run: dict) -> str:
    """A `bench_kernels.py` record's dispatch rows: dense against dropless
    train steps by `n / k`, and, where the record has them, the dense
    dispatch as stacked einsums against its two plain matmuls."""
    dispatch_rows = [r for r in run["rows"] if r["table"] == "dispatch"]
    pairs = sorted({(r["n"], r["k"]) for r in dispatch_rows}, key=lambda p: (p[0] / p[1], p))
    by_case = {(r["n"], r["k"], r["dispatch"]): r for r in dispatch_rows}
    einsum = any(r["dispatch"] == "dense_einsum" for r in dispatch_rows)
    table = []
    for n, k in pairs:
        dense, sparse = by_case[n, k, "dense"], by_case[n, k, "sparse"]
        ratio = _pass_ratios(sparse, dense, "train_ms")
        row = [f"{n / k:.3g}", n, k, _spread(dense["train_ms"], 1), _spread(sparse["train_ms"], 1),
               _spread(ratio), "sparse" if statistics.median(ratio) < 1 else "dense"]
        if einsum:
            stacked = by_case[n, k, "dense_einsum"]
            row += [_spread(stacked["train_ms"], 1), _spread(_pass_ratios(dense, stacked, "train_ms"))]
        table.append(row)
    headers = ["n / k", "n", "k", "dense train ms", "dropless train ms", "dropless over dense", "faster"]
    if einsum:
        headers += ["dense as stacked einsums ms", "dense over stacked einsums"]
    return markdown_table(headers, table)


def _kernel_runs(records: Records, files: dict, size, table, missing: str) -> str:
    """One `bench_kernels.py` table per committed backend record, each under
    a line naming its record, `size(config)` and how it was timed."""
    parts = []
    for backend, path, run in committed_runs(records, files):
        config = run["config"]
        parts.append(f"**{BACKEND_NAMES.get(backend, backend).replace(' (XLA)', '')}** (`{path}`; "
                     f"{size(config)}; {run['machine']['cpu_count']} CPU cores; median over "
                     f"{config['repeats']} passes, range in brackets)")
        parts.append(table(run))
    return "\n\n".join(parts) if parts else missing


@report_block("benchmarks/README.md", "kernels")
def kernels(records: Records) -> str:
    return _kernel_runs(
        records, KERNEL_FILES,
        lambda config: f"{config['rows']} rows of {config['features']} features, hidden {config['hidden']}",
        kernel_tables, "No kernel benchmark record is committed yet (`benchmarks/bench_kernels.py --json`).")


DISPATCH_FILES = {"tensorflow": "dispatch_cpu_tf.json", "jax": "dispatch_cpu_jax.json",
                  "torch": "dispatch_cpu_torch.json"}
DISPATCH_SMALL_FILES = {"tensorflow": "dispatch_small_cpu_tf.json", "jax": "dispatch_small_cpu_jax.json",
                        "torch": "dispatch_small_cpu_torch.json"}


@report_block("benchmarks/README.md", "dispatch")
def dispatch(records: Records) -> str:
    return _kernel_runs(
        records, DISPATCH_FILES, lambda config: f"{config['rows'] // 2} tokens of {config['features']} features",
        dispatch_table, "No dispatch record is committed yet (`benchmarks/bench_kernels.py --dispatch --json`).")


@report_block("benchmarks/README.md", "kernels-small")
def kernels_small(records: Records) -> str:
    return _kernel_runs(
        records, DISPATCH_SMALL_FILES, lambda config: f"{config['rows'] // 2} tokens of {config['features']} features",
        dispatch_table,
        "No small-batch dispatch record is committed yet (`benchmarks/bench_kernels.py --dispatch --rows 256 --json`).")


IMBALANCE_FILES = {"tensorflow": "imbalance_cpu_tf.json", "jax": "imbalance_cpu_jax.json",
                   "torch": "imbalance_cpu_torch.json"}


def imbalance_table(run: dict) -> str:
    """One row per case: each engine's train step, and, where the record
    timed them (`--predict`), the buffers' and sorted rows' predict calls."""
    rows = [r for r in run["rows"] if r["table"] == "imbalance"]
    predicts = all("predict_ms" in r for r in rows)
    cases = list(dict.fromkeys((r["tokens"], r["n"], r["k"], r["router"]) for r in rows))
    table = []
    for case in cases:
        by_engine = {r["engine"]: r for r in rows if (r["tokens"], r["n"], r["k"], r["router"]) == case}
        buffers, sorted_rows = by_engine["buffers"], by_engine["rows"]
        line = [*case, _f(buffers["busiest_over_mean"], 1),
                *(_spread(by_engine[e]["train_ms"], 0) for e in ("dense", "buffers", "rows", "auto")),
                _spread(_pass_ratios(buffers, sorted_rows, "train_ms"))]
        if predicts:
            line += [_spread(buffers["predict_ms"], 0), _spread(sorted_rows["predict_ms"], 0),
                     _spread(_pass_ratios(buffers, sorted_rows, "predict_ms"))]
        table.append(line)
    header = ["tokens", "n", "k", "router", "busiest / mean load", "dense ms", "buffers ms",
              "sorted rows ms", "automatic ms", "buffers over rows"]
    if predicts:
        header += ["predict: buffers ms", "predict: sorted rows ms", "predict: buffers over rows"]
    return markdown_table(header, table)


@report_block("benchmarks/README.md", "imbalance")
def imbalance(records: Records) -> str:
    parts = []
    for backend, path, run in committed_runs(records, IMBALANCE_FILES):
        parts.append(f"**{BACKEND_NAMES.get(backend, backend).replace(' (XLA)', '')}** (`{path}`; "
                     f"{run['machine']['cpu_count']} CPU cores, 1-minute load average "
                     f"{run['load_average'][0]:.1f} at the end; median over {run['config']['repeats']} "
                     "interleaved passes, range in brackets)")
        parts.append(imbalance_table(run))
    if not parts:
        return "No imbalance record is committed yet (`benchmarks/bench_kernels.py --imbalance --json`)."
    return "\n\n".join(parts)


EXPERT_LOOP_RECORD = f"{BENCH}/expert_loop_cpu_jax.json"
# Train steps: every n in one build, and the peer benchmark's build (n in
# 8, 64, 256), whose n=256, k=2 router takes a larger rung.
EXPERT_LOOP_TRAIN_RECORDS = (f"{BENCH}/expert_loop_train_cpu_jax.json",
                             f"{BENCH}/expert_loop_train_cpu_jax_rung64.json")


def expert_loop_table(run: dict) -> str:
    """`benchmarks/bench_expert_loop.py`'s record: the experts one at a
    time against the batched einsum, pass by pass."""
    table = [[r["n"], r["k"], _f(r["busiest_over_mean"], 2), _spread(r["loop_ms"]), _spread(r["batched_ms"]),
              _spread([loop / batched for loop, batched in zip(r["loop_ms"], r["batched_ms"])])]
             for r in run["rows"]]
    return markdown_table(["n", "k", "busiest / mean load", "loop ms", "batched einsum ms", "loop over batched"],
                          table)


def _expert_loop_heading(run: dict, path: str) -> str:
    config = run["config"]
    what = "train step" if config.get("train") else "inference"
    return (f"**JAX, {what}** (`{path}`; tokens ({config['batch']}, {config['seq']}, "
            f"{config['features']}), expert hidden {config['hidden']}; {_cores(run['machine'])}; "
            f"1-minute load average {run['load_average'][0]:.1f} "
            f"at the end). Median over {config['repeats']} interleaved passes of the median of {config['steps']} "
            f"calls, range in brackets.")


@report_block("benchmarks/README.md", "expert-loop")
def expert_loop(records: Records) -> str:
    parts = []
    for path in (EXPERT_LOOP_RECORD, *EXPERT_LOOP_TRAIN_RECORDS):
        if records.glob(path):
            run = records.json(path)
            parts.append(f"{_expert_loop_heading(run, path)}\n\n{expert_loop_table(run)}")
    return "\n\n".join(parts) or f"Not measured yet (`{EXPERT_LOOP_RECORD}`)."


EINSUM_PROFILE_RECORD = f"{BENCH}/profile_einsum_cpu_jax.json"


def einsum_profile_table(run: dict) -> str:
    """`benchmarks/profile_einsum_jax.py`'s record: the experts' MLP as one
    batched einsum and as a loop, by experts and rows per expert."""
    table = []
    for r in run["rows"]:
        batched = statistics.median(r["batched_ms"])
        table.append([r["n"], r["rows"], _spread(r["batched_ms"]), f"{r['gflop'] / batched * 1000:.0f}",
                      _spread(r["loop_ms"]),
                      _spread([loop / b for loop, b in zip(r["loop_ms"], r["batched_ms"])])])
    return markdown_table(["n", "rows per expert C", "batched einsum ms", "batched GFLOP/s", "loop ms",
                           "loop over batched"], table)


@report_block("benchmarks/README.md", "profile-einsum")
def einsum_profile(records: Records) -> str:
    if not records.glob(EINSUM_PROFILE_RECORD):
        return f"Not measured yet (`{EINSUM_PROFILE_RECORD}`)."
    run = records.json(EINSUM_PROFILE_RECORD)
    config = run["config"]
    return (f"**JAX, forward** (`{EINSUM_PROFILE_RECORD}`; experts of {config['features']} -> {config['hidden']} "
            f"-> {config['features']}; {_cores(run['machine'])}; 1-minute load average "
            f"{run['load_average'][0]:.1f} at the end). Median over {config['repeats']} interleaved passes of the "
            f"median of {config['steps']} calls, range in brackets; GFLOP/s from the median.\n\n"
            f"{einsum_profile_table(run)}")


# Examples (reports/records/examples/*.json, written by examples/*.py) ---------


def example_table(records: Records, script: str) -> str:
    """The example's own `--table` over the committed records. The scripts
    are keras-io style, one file each, so their table code stays in them;
    they run under Keras's NumPy backend here, which imports no framework."""
    import os
    import subprocess

    out = records.root / "reports" / "records" / "examples"
    result = subprocess.run(
        [sys.executable, str(records.root / "examples" / script), "--table", "--out", str(out)],
        capture_output=True, text=True, env={**os.environ, "KERAS_BACKEND": "numpy"},
    )
    if result.returncode != 0:
        raise RecordError(f"examples/{script} --table failed: {result.stderr.strip().splitlines()[-1:]}")
    return result.stdout.strip()


@report_block("README.md", "example-vit")
def example_vit(records: Records) -> str:
    return example_table(records, "vit_moe.py")


@report_block("README.md", "example-char-lm")
def example_char_lm(records: Records) -> str:
    return example_table(records, "char_lm_moe.py")


@report_block("README.md", "example-upcycle")
def example_upcycle(records: Records) -> str:
    if not records.glob("reports/records/examples/upcycle_vit-s*.json"):
        return "No full run of `examples/upcycle_vit.py` is recorded yet."
    return example_table(records, "upcycle_vit.py")


# Builders kept in their own modules register their blocks on import.
from pipelines.reports import study_scale  # noqa: E402,F401
from pipelines.reports import digit_recognizer  # noqa: E402,F401
