"""Blocks of `reports/moe_study.md` for the study at scale: data size, many
experts, balancing at 60k and conv experts.

Every number comes from the per-run records under `reports/records/study/`
(one JSON file per trained run, written by `python -m pipelines.experiments`
through `pipelines.experiments.run_store`). A cell whose runs are not all
recorded yet says how many are, so a partly finished sweep reports what it
has and nothing more.
"""

from __future__ import annotations

import math
import shlex
import statistics

from pipelines.records import markdown_table
from pipelines.reports import Records
from pipelines.reports import report_block

STUDY = "reports/records/study"
TARGET = "reports/moe_study.md"
SEEDS = 3
FASHION_SIZES = (1_000, 4_000, 15_000, 60_000)
DIGITS_KEY = ("digits", 4_000)
FULL_KEY = ("fashion", 60_000)


def runs(records: Records, experiment: str) -> list[dict]:
    return [records.json(path) for path in records.glob(f"{STUDY}/{experiment}/*.json")]


def _key(run: dict) -> tuple[str, int]:
    metrics = run["metrics"]
    return metrics["dataset"], int(metrics["train_size"])


def _label(run: dict) -> str:
    return run["config"]["label"]


def grouped(runs_: list[dict], metric: str = "test_accuracy") -> dict:
    """`{(label, dataset, train_size): {seed: value}}`."""
    table: dict = {}
    for run in runs_:
        table.setdefault((_label(run), *_key(run)), {})[int(run["seed"])] = float(run["metrics"][metric])
    return table


def median_cell(values, scale=100.0, digits=2, expected=SEEDS) -> str:
    """`87.12 (86.90-87.40)`: median and range over seeds; a cell with fewer
    than `expected` seeds says how many it has."""
    if not values:
        return "pending"
    values = sorted(scale * v for v in values)
    text = f"{statistics.median(values):.{digits}f}"
    if len(values) > 1:
        text += f" ({values[0]:.{digits}f}-{values[-1]:.{digits}f})"
    if len(values) < expected:
        text += f" [{len(values)}/{expected} seeds]"
    return text


def t_interval(values, confidence=0.95) -> tuple[float, float, float]:
    """Mean and the two ends of its t confidence interval (NaN ends for one value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan, math.nan
    from scipy import stats

    half = stats.t.ppf(0.5 + confidence / 2, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def paired_gaps(table: dict, label: str, baseline: str, dataset: str, size: int) -> list[float]:
    """Accuracy of `label` minus `baseline`, seed by seed, in percentage points."""
    ours, theirs = table.get((label, dataset, size), {}), table.get((baseline, dataset, size), {})
    return [100 * (ours[s] - theirs[s]) for s in sorted(set(ours) & set(theirs))]


def gap_cell(gaps) -> str:
    if not gaps:
        return "pending"
    mean, low, high = t_interval(gaps)
    if math.isnan(low):
        return f"{mean:+.2f} [1 seed]"
    return f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]"


def trend(table: dict, label: str, baseline: str, sizes=FASHION_SIZES) -> tuple[float, float, float] | None:
    """Least-squares slope of the seed-paired gap against log10(data size),
    in pp per tenfold data, with its 95% interval; None below two sizes."""
    points = [(math.log10(size), gap) for size in sizes
              for gap in paired_gaps(table, label, baseline, "fashion", size)]
    if len({x for x, _ in points}) < 2 or len(points) < 3:
        return None
    from scipy import stats

    fit = stats.linregress([x for x, _ in points], [y for _, y in points])
    half = stats.t.ppf(0.975, len(points) - 2) * fit.stderr
    return fit.slope, fit.slope - half, fit.slope + half


# Data size ---------------------------------------------------------------------

BASELINES = {"mlp": "baseline", "cnn": "cnn dense head"}


FAMILY_ORDER = {"dense": 0, "moe": 1, "dense-wide": 2}


def _labels_by_arch(runs_: list[dict]) -> dict[str, list[str]]:
    """Recorded config labels per architecture: dense, then MoE by k and n,
    then the wide dense models; an architecture with no run maps to []."""
    found: dict[str, dict[str, tuple]] = {"mlp": {}, "cnn": {}}
    for run in runs_:
        m = run["metrics"]
        found.setdefault(m["arch"], {})[_label(run)] = (FAMILY_ORDER.get(m["family"], 3), m["top_k"], m["num_experts"])
    return {arch: sorted(labels, key=labels.get) for arch, labels in found.items()}


@report_block(TARGET, "scale-datasize")
def datasize_table(records: Records) -> str:
    runs_ = runs(records, "datasize")
    table = grouped(runs_)
    header = ["model"] + [f"Fashion {size // 1000}k" for size in FASHION_SIZES] + ["digits 4k"]
    rows = []
    for arch, labels in _labels_by_arch(runs_).items():
        if not labels:
            rows.append((f"{arch.upper()}: every model", *["pending"] * (len(header) - 1)))
        for label in labels:
            cells = [median_cell(list(table.get((label, "fashion", size), {}).values())) for size in FASHION_SIZES]
            cells.append(median_cell(list(table.get((label, *DIGITS_KEY), {}).values())))
            rows.append((f"{arch.upper()}: {label}", *cells))
    return markdown_table(header, rows)


@report_block(TARGET, "scale-gap")
def datasize_gap_table(records: Records) -> str:
    runs_ = runs(records, "datasize")
    table = grouped(runs_)
    header = (["model", "vs"] + [f"Fashion {size // 1000}k" for size in FASHION_SIZES]
              + ["digits 4k", "trend, pp per 10x data [95% CI]"])
    rows = []
    for arch, labels in _labels_by_arch(runs_).items():
        baseline = BASELINES[arch]
        for label in labels:
            if label == baseline:
                continue
            cells = [gap_cell(paired_gaps(table, label, baseline, "fashion", size)) for size in FASHION_SIZES]
            cells.append(gap_cell(paired_gaps(table, label, baseline, *DIGITS_KEY)))
            slope = trend(table, label, baseline)
            cells.append("pending" if slope is None else f"{slope[0]:+.2f} [{slope[1]:+.2f}, {slope[2]:+.2f}]")
            rows.append((f"{arch.upper()}: {label}", baseline, *cells))
    return markdown_table(header, rows)


@report_block(TARGET, "scale-datasize-answer")
def datasize_answer(records: Records) -> str:
    """The data-size question answered in numbers, per architecture."""
    runs_ = runs(records, "datasize")
    table = grouped(runs_)
    lines = []
    for arch, labels in _labels_by_arch(runs_).items():
        baseline = BASELINES[arch]
        moe = [label for label in labels if label != baseline and not label.startswith("dense")]
        measured = [(label, trend(table, label, baseline)) for label in moe]
        measured = [(label, slope) for label, slope in measured if slope is not None]
        if not measured:
            lines.append(f"- {arch.upper()}: pending (fewer than two data sizes recorded for its MoE models).")
            continue
        parts = []
        for label, (slope, low, high) in measured:
            verdict = ("grows in MoE's favour" if low > 0 else "shrinks" if high < 0
                       else "shows no trend the seeds can resolve")
            small = gap_cell(paired_gaps(table, label, baseline, "fashion", FASHION_SIZES[0]))
            sizes = [s for s in FASHION_SIZES if paired_gaps(table, label, baseline, "fashion", s)]
            large = gap_cell(paired_gaps(table, label, baseline, "fashion", sizes[-1]))
            parts.append(f"{label}: {small} pp at 1k, {large} pp at {sizes[-1] // 1000}k; "
                         f"slope {slope:+.2f} pp per tenfold data [{low:+.2f}, {high:+.2f}], so the gap {verdict}")
        lines.append(f"- {arch.upper()} (gap to `{baseline}`, mean [95% CI] over seeds): " + "; ".join(parts) + ".")
    return "\n".join(lines)


# Many experts -----------------------------------------------------------------


def _steps_per_epoch(run: dict) -> int:
    train = run["config"]["train"]
    fit_rows = run["metrics"]["train_size"] * (1 - train["validation_fraction"])
    return math.ceil(fit_rows / train["batch_size"])


@report_block(TARGET, "scale-experts")
def experts_scale_table(records: Records) -> str:
    runs_ = [r for r in runs(records, "experts_scale") if _key(r) == FULL_KEY]
    if not runs_:
        return "Pending: no run of `python -m pipelines.experiments experts_scale` is recorded yet."
    by_label: dict[str, list[dict]] = {}
    for run in runs_:
        by_label.setdefault(_label(run), []).append(run)
    rows = []
    # The baseline first, then by k and n as numbers ("n=16" sorts before "n=2" as text).
    order = sorted(by_label, key=lambda label: (by_label[label][0]["metrics"].get("top_k", 0),
                                                by_label[label][0]["metrics"].get("num_experts", 0)))
    for label in order:
        group = by_label[label]
        metrics = [r["metrics"] for r in group]
        step_ms = [1000 * m["epoch_seconds"] / _steps_per_epoch(r) for m, r in zip(metrics, group)]
        rows.append((
            label,
            f"{metrics[0]['params_total']:,}",
            f"{metrics[0]['params_active']:,}",
            median_cell([m["test_accuracy"] for m in metrics]),
            median_cell(step_ms, scale=1.0, digits=1),
            median_cell([m.get("final_max_load_ratio", 1.0) for m in metrics], scale=1.0),
        ))
    return markdown_table(["model", "total params", "active params", "test acc %",
                           "epoch time per training step, ms (validation included)",
                           "busiest expert / ideal load"], rows)


# Balancing at 60k ---------------------------------------------------------------


def _by_label(runs_: list[dict]) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for run in runs_:
        if _key(run) == FULL_KEY:
            found.setdefault(_label(run), []).append(run["metrics"])
    return found


@report_block(TARGET, "scale-balancing")
def balancing_table(records: Records) -> str:
    rows = []
    for experiment in ("collapse", "gating", "balancing"):
        for label, metrics in _by_label(runs(records, experiment)).items():
            rows.append((
                f"{experiment}: {label}",
                median_cell([m["final_entropy"] for m in metrics], scale=1.0, digits=3),
                median_cell([m["final_max_load_ratio"] for m in metrics], scale=1.0),
                median_cell([m["test_accuracy"] for m in metrics]),
            ))
    if not rows:
        return ("Pending: no run of `collapse`, `gating` or `balancing` with `--dataset fashion --train-size 60000 "
                "--test-size 10000` is recorded yet.")
    return markdown_table(["experiment: config (MoE n=3, k=1)", "load entropy (nats, max 1.099)",
                           "busiest expert / ideal", "test acc %"], rows)


# Conv experts --------------------------------------------------------------------


@report_block(TARGET, "scale-conv")
def conv_table(records: Records) -> str:
    # Per image, then per pixel, as the experiment lists them.
    routed = sorted((r for r in runs(records, "conv_experts") if _key(r) == FULL_KEY),
                    key=lambda run: ("pixel" in _label(run), _label(run), run["seed"]))
    if not routed:
        return "Pending: no run of `python -m pipelines.experiments conv_experts` is recorded yet."
    # The plain CNN is the data-size sweep's dense-head run on the full set.
    baseline = BASELINES["cnn"]
    plain = [r for r in runs(records, "datasize") if _key(r) == FULL_KEY and _label(r) == baseline]
    table = grouped(plain + routed)
    rows = []
    for label, metrics in _by_label(plain + routed).items():
        nmi = [m["class_expert_nmi"] for m in metrics if "class_expert_nmi" in m]
        loads = [_busiest_share(m["class_expert_counts"]) for m in metrics if "class_expert_counts" in m]
        rows.append((
            label,
            f"{metrics[0]['params_total']:,}",
            median_cell([m["test_accuracy"] for m in metrics]),
            "-" if label == baseline else gap_cell(paired_gaps(table, label, baseline, *FULL_KEY)),
            median_cell([m["epoch_seconds"] for m in metrics], scale=1.0, digits=0),
            median_cell(loads, scale=1.0) if loads else "-",
            median_cell(nmi, scale=1.0, digits=3) if nmi else "-",
        ))
    return markdown_table(["model", "total params", "test acc %", "minus plain CNN, pp [95% CI]",
                           "epoch time, s", "busiest expert / ideal (test set)", "class-expert NMI"], rows)


def _busiest_share(class_expert_counts) -> float:
    """The busiest expert's load over the balanced load, from class x expert counts."""
    loads = [sum(column) for column in zip(*class_expert_counts)]
    return max(loads) * len(loads) / sum(loads)


# Provenance ----------------------------------------------------------------------


def _machine(run: dict) -> str:
    machine = run.get("machine") or {}
    return f"{machine.get('cpu_count', '?')}-core {machine.get('processor') or 'CPU'}, " \
           f"{machine.get('accelerator') or 'no accelerator'}"


def _command(recorded: str) -> str:
    """A recorded command line as it is typed: `python -m pipelines.experiments ...`
    (the record holds the interpreter and the module's file path)."""
    words = shlex.split(recorded)[1:]
    if words and words[0].endswith("pipelines/experiments/__main__.py"):
        words = ["-m", "pipelines.experiments", *words[1:]]
    return shlex.join(["python", *words])


@report_block(TARGET, "scale-commands")
def commands_table(records: Records) -> str:
    rows = []
    for experiment in ("datasize", "experts_scale", "collapse", "gating", "balancing", "conv_experts"):
        runs_ = runs(records, experiment)
        if not runs_:
            continue
        commands = sorted({_command(run["command"]) for run in runs_})
        machines = sorted({_machine(run) for run in runs_})
        loads = [run["load_average"][0] for run in runs_ if run.get("load_average")]
        hours = sum(run["timings"]["total_s"] for run in runs_) / 3600
        versions = runs_[0]["versions"]
        rows.append((
            experiment,
            "<br>".join(f"`{c}`" for c in commands),
            str(len(runs_)),
            f"{hours:.2f}",
            "; ".join(machines),
            f"{min(loads):.1f}-{max(loads):.1f}" if loads else "-",
            f"Keras {versions.get('keras')}, {versions.get('backend')}",
        ))
    if not rows:
        return "No run at scale is recorded yet."
    return markdown_table(["experiment", "commands", "runs recorded", "training hours (sum over runs)",
                           "machine", "1-min load average", "software"], rows)


# The reference study's claims, beside ours -------------------------------------------

# The reference's MLP on full MNIST (60,000 images, one seed per config, k=1)
# and on CIFAR-10 (50,000).
REFERENCE = {
    "mnist": {"baseline": 97.52, "n=2": 97.34, "n=3": 96.50, "n=4": 96.09, "n=8": 95.92},
    "cifar10": {"baseline": 38.90, "n=2": 36.51, "n=8": 33.68},
}
CLAIM_MODEL = "n=4 k=1"  # the reference's kind of model (k=1) at a size it ran


def _verdict(gaps) -> str:
    if len(gaps) < 2:
        return "pending"
    _, low, high = t_interval(gaps)
    if high < 0:
        return "MoE below dense"
    if low > 0:
        return "MoE above dense"
    return "no difference resolved"


@report_block(TARGET, "scale-claims")
def claims_table(records: Records) -> str:
    table = grouped(runs(records, "datasize"))
    mnist, cifar = REFERENCE["mnist"], REFERENCE["cifar10"]
    reference_gap = (f"MNIST 60k: MoE k=1 n=2/3/4/8 {mnist['n=2'] - mnist['baseline']:+.2f}/"
                     f"{mnist['n=3'] - mnist['baseline']:+.2f}/{mnist['n=4'] - mnist['baseline']:+.2f}/"
                     f"{mnist['n=8'] - mnist['baseline']:+.2f} pp; CIFAR-10 50k: n=2/8 "
                     f"{cifar['n=2'] - cifar['baseline']:+.2f}/{cifar['n=8'] - cifar['baseline']:+.2f} pp "
                     "(one seed each)")
    rows = []
    ours = []
    for arch, label, baseline in (("MLP", CLAIM_MODEL, "baseline"), ("CNN", "cnn MoE(3,5) head", "cnn dense head")):
        cells = []
        for size in FASHION_SIZES:
            gaps = paired_gaps(table, label, baseline, "fashion", size)
            if gaps:
                cells.append(f"{size // 1000}k {gap_cell(gaps)} ({_verdict(gaps)})")
        ours.append(f"{arch} {label}: " + ("; ".join(cells) if cells else "pending"))
    rows.append(("MoE underperforms its dense baseline on small-to-medium data (parameter dilution, "
                 "too little data per expert)", reference_gap, "<br>".join(ours)))
    slopes = []
    for arch, label, baseline in (("MLP", "n=4 k=1", "baseline"), ("MLP", "n=16 k=1", "baseline"),
                                  ("MLP", "n=4 k=2", "baseline"), ("MLP", "n=16 k=2", "baseline"),
                                  ("CNN", "cnn MoE(3,5) head", "cnn dense head")):
        slope = trend(table, label, baseline)
        if slope is not None:
            slopes.append(f"{arch} {label}: {slope[0]:+.2f} [{slope[1]:+.2f}, {slope[2]:+.2f}] pp per 10x data")
    rows.append(("Dataset size matters more than complexity; MoE 'likely needs millions of samples'",
                 "inferred from MNIST (60k, small gap) vs CIFAR-10 (50k, larger gap): two datasets of about "
                 "the same size, so data size was never varied",
                 "<br>".join(slopes) if slopes else "pending"))
    return markdown_table(["claim of the reference", "reference's numbers", "ours: MoE minus dense, mean [95% CI]"],
                          rows)


@report_block(TARGET, "scale-datasize-routing")
def datasize_routing_table(records: Records) -> str:
    """How many experts the MoE models actually use at the end of training:
    the busiest expert's share over the balanced share (n = one expert
    takes everything), per data size."""
    runs_ = [r for r in runs(records, "datasize") if r["metrics"]["family"] == "moe"]
    table = grouped(runs_, "final_max_load_ratio")
    header = ["model"] + [f"Fashion {size // 1000}k" for size in FASHION_SIZES] + ["digits 4k"]
    rows = []
    for arch, labels in _labels_by_arch(runs_).items():
        for label in labels:
            cells = [median_cell(list(table.get((label, "fashion", size), {}).values()), scale=1.0)
                     for size in FASHION_SIZES]
            cells.append(median_cell(list(table.get((label, *DIGITS_KEY), {}).values()), scale=1.0))
            rows.append((f"{arch.upper()}: {label}", *cells))
    if not rows:
        return "Pending: no MoE run of the data-size sweep is recorded yet."
    return markdown_table(header, rows)
