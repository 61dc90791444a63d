"""`reports/moe_study.md`: every finding with its numbers, beside the reference study.

The report is generated only from the CSVs (and PNGs) the experiments wrote
into the output folder, so re-running an experiment and then `report`
refreshes every number. Sections whose CSV is missing say so.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
from scipy import stats

from pipelines.experiments import models
from pipelines.experiments.plots import ranked_loads
from pipelines.records import library_versions, markdown_table, write_text_atomically

REPORT_NAME = "moe_study.md"

# The reference study (PyTorch MLP MoE, one seed per config, k=1, test set
# used for model selection).
REFERENCE_COLLAPSE = {0.0: ("27/4/70%", 0.721), 0.01: ("34/33/34%", 1.099)}
REFERENCE_MNIST = {"baseline": 97.52, 2: 97.34, 3: 96.50, 4: 96.09, 8: 95.92}
REFERENCE_CIFAR = {"baseline": 38.90, 2: 36.51, 8: 33.68}


def _read(out: Path, name: str) -> pd.DataFrame | None:
    path = out / name
    return pd.read_csv(path) if path.exists() else None


NO_SPREAD = "n/a (1 seed)"


def _spread(std, digits) -> str:
    """A sample std, or `n/a (1 seed)` for the NaN that one seed gives."""
    return NO_SPREAD if pd.isna(std) else f"{std:.{digits}f}"


def _pct(mean, std=None) -> str:
    """An accuracy (fraction) as `97.12 ± 0.31` percent (`97.12 ± n/a (1 seed)`)."""
    return f"{100 * mean:.2f}" if std is None else f"{100 * mean:.2f} ± {_spread(100 * std, 2)}"


def _pm(mean, std, digits=3) -> str:
    # `+ 0.0` turns the -0.0 that an entropy of exactly one expert gives into 0.0.
    return f"{round(mean, digits) + 0.0:.{digits}f} ± {_spread(std, digits)}"


def compare(frame: pd.DataFrame, column: str, a, b, value="test_accuracy") -> tuple[float, float]:
    """(mean of `b` - mean of `a`, Welch t-test p-value) over seeds of `frame`."""
    first = frame.loc[frame[column] == a, value].to_numpy()
    second = frame.loc[frame[column] == b, value].to_numpy()
    difference = float(second.mean() - first.mean())
    if len(first) < 2 or len(second) < 2:
        return difference, float("nan")
    return difference, float(stats.ttest_ind(second, first, equal_var=False).pvalue)


def _diff(difference, p_value) -> str:
    """`-0.52 pp (p=0.03)` for a difference of accuracies."""
    p = "n/a" if math.isnan(p_value) else f"{p_value:.2g}"
    return f"{100 * difference:+.2f} pp (Welch p={p})"


def _described(value, describe) -> str | None:
    """A run-log cell as text: JSON objects through `describe`, other text
    as it is; None for an empty cell."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or not str(value).strip():
        return None
    try:
        parsed = json.loads(str(value))
    except ValueError:
        return str(value).strip()
    return describe(parsed) if isinstance(parsed, dict) else str(value).strip()


def _machine_text(machine: dict) -> str:
    """`records.machine_description()` as one phrase."""
    cpu = f"{machine.get('cpu_count', '?')}-core CPU ({machine.get('processor') or 'unknown model'})"
    accelerator = machine.get("accelerator") or "no accelerator"
    return f"{cpu}, {accelerator}, {machine.get('platform', 'unknown platform')}"


def _versions_text(versions: dict) -> str:
    """`records.library_versions()` as one phrase; always names the backend."""
    names = {"keras": "Keras", "tensorflow": "TensorFlow", "jax": "JAX", "torch": "PyTorch",
             "numpy": "NumPy", "python": "Python"}
    parts = [f"{label} {versions[key]}" for key, label in names.items() if key in versions]
    return f"backend `{versions.get('backend', 'unknown')}`: " + ", ".join(parts)


def _recorded(log: pd.DataFrame | None, column: str, describe) -> list[tuple[str, list[str]]]:
    """Distinct values of a run-log column with the experiments each covers,
    in log order; ("", [...]) collects the runs that recorded none."""
    if log is None:
        return []
    found: dict[str, list[str]] = {}
    cells = log[column] if column in log.columns else [None] * len(log)
    for experiment, cell in zip(log["experiment"], cells):
        found.setdefault(_described(cell, describe) or "", []).append(str(experiment))
    return list(found.items())


def _provenance_lines(log: pd.DataFrame | None) -> list[str]:
    """Hardware and software lines from the run log. The machine is never
    taken from the one writing the report, which need not be the one that
    ran the experiments."""
    lines = []
    for label, column, describe in (("Hardware", "machine", _machine_text), ("Software", "versions", _versions_text)):
        missing = f"{column} not recorded"
        recorded = _recorded(log, column, describe)
        if log is None:
            text = f"{missing} (no run_log.csv in this folder)"
        elif not recorded:
            text = f"{missing} (run_log.csv lists no full run)"
        elif len(recorded) == 1:
            text = recorded[0][0] or f"{missing} (run_log.csv has no `{column}` for these runs)"
        else:
            text = "; ".join(f"{value or missing} ({', '.join(experiments)})" for value, experiments in recorded)
        if label == "Software" and not any(value for value, _ in recorded):
            # Versions rarely differ between the machine that ran the study
            # and the checkout that reports it, so they are worth showing,
            # labelled for what they are.
            text += f"; the environment that wrote this report has {_versions_text(library_versions())}"
        lines.append(f"- {label}: {text}.")
    lines.append("- Times are indicative only: the runs shared their machine with other jobs.")
    return lines


# Sections -------------------------------------------------------------------


def setup_section(out: Path) -> str:
    log = _read(out, "run_log.csv")
    experts = _read(out, "experts_summary.csv")
    runs = None
    if log is not None:
        runs = log[~log["quick"].astype(str).str.lower().eq("true")]
        # A re-run replaces an experiment's CSVs, so only its last command counts.
        runs = runs.drop_duplicates("experiment", keep="last")
    lines = [
        "## Setup",
        "",
        *_provenance_lines(runs),
        f"- Baseline: MLP 784-{models.HIDDEN}-{models.UNITS}-10, relu. MoE: `MoEDense({models.UNITS}, num_experts=n, "
        f"top_k=k, expert_hidden={models.HIDDEN}, activation='relu')` -> Dense(10, softmax): every expert is the "
        "baseline's 784-128-64 block, routed on the raw 784 pixels (router 784 x n).",
        "- Protocol: every configuration trained with seeds 0..S-1; each seed draws its own stratified 15% "
        "validation split of the training data; Adam (lr 1e-3), batch 64, early stopping on validation loss "
        "(patience 3, best weights restored); the reported number is accuracy on the separate test set, never "
        "used for selection. Tables show mean ± sample std over seeds (n/a with one seed); differences come with a Welch t-test p.",
        "- MoE default balancing: Switch loss 0.01 unless a section says otherwise; k=1 mixes with the router "
        "probability (Switch), k=2 renormalises the two gates (Mixtral).",
    ]
    if experts is not None:
        rows = [
            (row.config, f"{int(row.params_total_mean):,}", f"{int(row.params_active_mean):,}")
            for row in experts.itertuples()
        ]
        lines += ["", "Parameters (total trainable; active = used by one input: router + k experts + head):", "",
                  markdown_table(["model", "total", "active per input"], rows)]
    if runs is not None:
        rows = [(f"`{row.command}`", row.wall_seconds, row.finished_utc) for row in runs.itertuples()]
        lines += ["", "Commands that produced this report (run from the repository root), with wall time:", "",
                  markdown_table(["command", "wall s", "finished (UTC)"], rows),
                  "", "then `python -m pipelines.experiments report`."]
    return "\n".join(lines)


def collapse_section(out: Path) -> str:
    summary, frame, epochs = (_read(out, n) for n in ("collapse_summary.csv", "collapse.csv", "collapse_epochs.csv"))
    if summary is None or epochs is None:
        return "## Collapse\n\nNot run (`python -m pipelines.experiments collapse`)."
    last = ranked_loads(epochs).sort_values("epoch").groupby(["config", "seed"]).tail(1)
    loads = last.groupby("config", sort=False)[[c for c in last.columns if c.startswith("rank_")]].mean()
    rows, claims = [], []
    for row in summary.itertuples():
        share = "/".join(f"{100 * v:.0f}" for v in loads.loc[row.config]) + "%"
        reference = REFERENCE_COLLAPSE.get(float(row.alpha), ("-", None))
        ref_text = reference[0] + (f", H={reference[1]:.3f}" if reference[1] else "")
        rows.append((row.config, share, _pm(row.final_entropy_mean, row.final_entropy_std),
                     _pm(row.final_max_load_ratio_mean, row.final_max_load_ratio_std, 2),
                     _pct(row.test_accuracy_mean, row.test_accuracy_std), ref_text))
    for inputs, group in summary.groupby("inputs", sort=False):
        none = group[group["alpha"] == 0.0].iloc[0]
        claims.append(
            f"- {inputs} inputs, no balancing: the busiest expert ends with "
            f"{100 * loads.loc[none.config].iloc[0]:.0f}% of the inputs (reference: 70%), load entropy "
            f"{max(0.0, none.final_entropy_mean):.3f} of a possible {math.log(3):.3f} nats (reference 0.721)."
        )
        for row in group[group["alpha"] != 0.0].itertuples():
            claims.append(f"- {inputs} inputs, Switch alpha={row.alpha:g} vs alpha=0: test accuracy "
                          f"{_diff(*compare(frame, 'config', none.config, row.config))}.")
    return "\n".join([
        "## 1. Collapse without balancing (MoE n=3, k=1, Switch alpha in {0, 0.01, 0.1}; raw and "
        "standardised inputs)",
        "",
        f"Fixed {int(summary['epochs_run_mean'].max())} epochs (best-validation weights restored for the test number) "
        "so the curves of all seeds line up. Loads are sorted busiest first in each run before averaging over "
        "seeds, because which expert wins differs between seeds. 'std. inputs' = pixels mapped to "
        "(x - 0.1307) / 0.3081 before the router (torchvision's MNIST normalisation); otherwise raw [0, 1] pixels.",
        "",
        markdown_table(["Switch", "load at last epoch (busiest/…/least)", "entropy (nats, max 1.099)",
                "max load / ideal", "test acc %", "reference study"], rows),
        "",
        *claims,
        "",
        "![load per epoch](collapse_load.png)",
        "",
        "![entropy per epoch](collapse_entropy.png)",
    ])


def balancing_section(out: Path) -> str:
    summary, frame = _read(out, "balancing_summary.csv"), _read(out, "balancing.csv")
    if summary is None:
        return "## Balancing methods\n\nNot run (`python -m pipelines.experiments balancing`)."
    rows = [
        (row.config, _pm(row.final_entropy_mean, row.final_entropy_std),
         _pm(row.final_max_load_ratio_mean, row.final_max_load_ratio_std, 2),
         f"{row.final_dead_experts_mean:.1f}", _pct(row.test_accuracy_mean, row.test_accuracy_std),
         _diff(*compare(frame, "config", "none", row.config)) if row.config != "none" else "-",
         f"{row.epoch_seconds_mean:.2f}")
        for row in summary.itertuples()
    ]
    best = summary.sort_values("final_entropy_mean", ascending=False).iloc[0]
    return "\n".join([
        "## 2. Balancing methods side by side (MoE n=3, k=1)",
        "",
        "Coefficients put every balancing term on about the same scale between a balanced and a collapsed "
        "router (n=3): Switch 0.01 (loss 1 -> 3), importance CV² 0.01 (0 -> 2), diversity/entropy 0.02 "
        "(0 -> 1), overflow 0.01 with capacity_factor 1.25 (0 -> 1.75; the capacity also drops over-capacity "
        "inputs in training), z-loss 0.001 (ST-MoE's value; it only shrinks logits and does not balance), "
        "loss-free bias rate 0.001 (DeepSeek-V3, no auxiliary loss). All other terms 0.",
        "",
        markdown_table(["method", "entropy at last epoch (nats)", "max load / ideal", "dead experts", "test acc %",
                "acc vs none", "s / epoch"], rows),
        "",
        f"Most balanced: {best.config} (entropy {best.final_entropy_mean:.3f} of {math.log(3):.3f}).",
        "",
        "![balancing](balancing.png)",
    ])


def experts_section(out: Path) -> str:
    summary, frame = _read(out, "experts_summary.csv"), _read(out, "experts.csv")
    if summary is None:
        return "## Number of experts\n\nNot run (`python -m pipelines.experiments experts`)."
    base = summary[summary["model"] == "baseline"].iloc[0]
    rows = []
    for row in summary.itertuples():
        reference = REFERENCE_MNIST.get("baseline" if row.model == "baseline" else
                                        (int(row.num_experts) if row.top_k == 1 else None))
        rows.append((row.config, _pct(row.test_accuracy_mean, row.test_accuracy_std),
                     _pct(row.train_accuracy_mean), _pct(row.val_accuracy_mean),
                     _diff(*compare(frame, "config", "baseline", row.config)) if row.model != "baseline" else "-",
                     f"{int(row.params_total_mean):,}", f"{int(row.params_active_mean):,}",
                     f"{row.epoch_seconds_mean:.2f}", f"{row.best_epoch_mean:.1f}",
                     "-" if reference is None else f"{reference:.2f}"))
    default_k1 = summary[(summary["model"] == "moe") & (summary["top_k"] == 1)]
    trend = ", ".join(f"n={int(r.num_experts)}: {_pct(r.test_accuracy_mean)}" for r in default_k1.itertuples())
    return "\n".join([
        "## 3. Number of experts and top-k (Switch 0.01)",
        "",
        markdown_table(["config", "test acc %", "train acc % (best epoch)", "val acc %", "vs baseline", "params total",
                "active / input", "s / epoch", "best epoch", "reference MNIST (k=1)"], rows),
        "",
        f"Dense baseline: {_pct(base.test_accuracy_mean, base.test_accuracy_std)}. MoE k=1 by n: {trend} "
        "(reference, full MNIST: 97.52 baseline; 97.34, 96.50, 96.09, 95.92 for n = 2, 3, 4, 8).",
        "",
        "![accuracy vs experts](experts_accuracy.png)",
        "",
        "![accuracy vs parameters](experts_params.png)",
    ])


def datasets_section(out: Path) -> str:
    summary, frame = _read(out, "datasets_summary.csv"), _read(out, "datasets.csv")
    notes_path = out / "datasets_notes.txt"
    if summary is None:
        return "## Datasets\n\nNot run (`python -m pipelines.experiments datasets`)."
    notes = notes_path.read_text().strip().splitlines() if notes_path.exists() else []
    rows = []
    for row in summary.itertuples():
        part = frame[frame["dataset"] == row.dataset]
        versus = "-" if row.config == "baseline" else _diff(*compare(part, "config", "baseline", row.config))
        rows.append((row.dataset, row.config, _pct(row.test_accuracy_mean, row.test_accuracy_std), versus,
                     f"{row.epoch_seconds_mean:.2f}"))
    return "\n".join([
        "## 4. Datasets",
        "",
        *[f"- {note}" for note in notes],
        "",
        markdown_table(["dataset", "model", "test acc %", "vs baseline", "s / epoch"], rows),
        "",
        "Reference study, CIFAR-10: " + ", ".join(
            f"{'baseline' if key == 'baseline' else f'{key} experts'} {value:.2f}"
            for key, value in REFERENCE_CIFAR.items()) + ".",
        "",
        "![datasets](datasets.png)",
    ])


def specialisation_section(out: Path) -> str:
    frame, counts = _read(out, "specialisation.csv"), _read(out, "specialisation_counts.csv")
    if frame is None or counts is None:
        return "## Specialisation\n\nNot run (`python -m pipelines.experiments specialisation`)."
    lines = ["## 5. Specialisation: which expert each class goes to (test set; k=2 counts both experts)", ""]
    for row in frame.itertuples():
        # Models with fewer experts have empty columns for the higher indices.
        matrix = counts[counts["config"] == row.config].filter(like="expert_").dropna(axis=1, how="all").to_numpy()
        shares = matrix / matrix.sum(axis=1, keepdims=True)
        top = shares.max(axis=1)
        lines.append(
            f"- {row.config} ({row.dataset}, seed {row.seed}, test acc {_pct(row.test_accuracy)}): normalised "
            f"mutual information I(class; expert)/H(expert) = {row.class_expert_nmi:.2f}; a class's "
            f"favourite expert takes on average {100 * top.mean():.0f}% of it ({int((top > 0.8).sum())} of 10 "
            f"classes go > 80% to one expert); expert loads on the test set: "
            + "/".join(f"{100 * v:.0f}" for v in matrix.sum(axis=0) / matrix.sum()) + "%."
        )
    lines += ["", "![class x expert routing](specialisation.png)"]
    return "\n".join(lines)


def gating_section(out: Path) -> str:
    summary, frame = _read(out, "gating_summary.csv"), _read(out, "gating.csv")
    if summary is None:
        return "## Gate\n\nNot run (`python -m pipelines.experiments gating`)."
    first = summary["config"].iloc[0]
    rows = [
        (row.config, _pm(row.final_entropy_mean, row.final_entropy_std),
         _pm(row.final_max_load_ratio_mean, row.final_max_load_ratio_std, 2),
         _pct(row.test_accuracy_mean, row.test_accuracy_std),
         "-" if row.config == first else _diff(*compare(frame, "config", first, row.config)))
        for row in summary.itertuples()
    ]
    return "\n".join([
        "## 6. Diagnosis: does the k=1 gate drive the collapse? (MoE n=3, k=1, Switch 0.01, raw inputs)",
        "",
        "gate=p: output = p(x) E(x) (Switch Transformer; the task loss trains the router). gate=1: "
        "`normalize_top_k=True`, the single gate is 1, so only the balancing loss trains the router.",
        "",
        markdown_table(["gate", "entropy at last epoch (nats)", "max load / ideal", "test acc %", "vs gate=p"], rows),
        "",
        "![entropy per epoch by gate](gating_entropy.png)",
    ])


SECTIONS = (setup_section, collapse_section, balancing_section, experts_section, datasets_section,
            specialisation_section, gating_section)


def build_report(out: Path, discussion: str = "") -> str:
    """The Markdown text of the report from the files in `out`."""
    parts = ["# MoE study: routing collapse, balancing, number of experts (moe_keras)\n\n"
             "Generated by `python -m pipelines.experiments report` from the CSVs in this folder."]
    parts += [section(Path(out)) for section in SECTIONS]
    if discussion:
        parts.append(discussion)
    return "\n\n".join(parts) + "\n"


def write_report(out: Path) -> Path:
    """Writes `<out>/moe_study.md`, appending `<out>/discussion.md` if present."""
    out = Path(out)
    discussion_path = out / "discussion.md"
    discussion = discussion_path.read_text() if discussion_path.exists() else ""
    path = out / REPORT_NAME
    write_text_atomically(path, build_report(out, discussion))
    return path
