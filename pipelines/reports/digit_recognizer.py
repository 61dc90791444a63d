"""Report blocks of the digit-recognizer pipeline on the embedded sample.

Read from committed records:

* `benchmarks/results/default_run_cpu.json` (`benchmarks/bench_default_run.py`):
  README's main job against an earlier commit, seed by seed.
* `reports/records/digit_recognizer/default/*.json`: run records of the
  default MoE(3,5) h64 and its equal-active dense baseline (h192), one per
  seed.
* `reports/records/digit_recognizer/grid/*.json`: one `--grid` run, its
  members and `grid-ensemble.json`.
* `reports/records/digit_recognizer/ensemble/*.json`: ensembles rebuilt
  from the default runs' saved probabilities (`ensemble RUN_JSON...`, the
  same mean that `--ensemble N` writes).
* `reports/records/digit_recognizer/options/*.json`: runs with
  `--pseudo-label` and `--deterministic` (TTA, the default, is measured
  within each default run, whose record keeps both predictions).
* `reports/records/digit_recognizer_screen/screen.json`: a validation-only
  screen of recipe variants (its `screen.py` never reads the held-out
  labels).

Every accuracy is on the 1,000 held-out digits of split 2 (`test_labels.csv`),
which no recipe decision looked at; "validation" is the 10% split of
`train.csv` each run draws with its seed.
"""

from __future__ import annotations

import statistics

from pipelines.records import markdown_table
from pipelines.reports import RecordError
from pipelines.reports import Records
from pipelines.reports import _model_name
from pipelines.reports import _trunk
from pipelines.reports import _spread
from pipelines.reports import report_block
from pipelines.reports.study_scale import t_interval

SPEED_RECORD = "benchmarks/results/default_run_cpu.json"
CV_SCREEN_RECORD = "reports/records/digit_recognizer_screen/cv_screen.json"
SCREEN_RECORD = "reports/records/digit_recognizer_screen/screen.json"
GRID_ENSEMBLE_SCREEN_RECORD = "reports/records/digit_recognizer_screen/cv_grid_ensemble.json"
# The default's runs, then those of earlier defaults: the head on the dense
# einsum and no TTA, the same recipe fed with tf.data autotuning on, batch 64
# at 2e-3 on the strided trunk, and the max-pool trunk before that.
DEFAULT_FOLDERS = ("default", "default-einsum", "default-autotune", "default-b64", "default-pool")
RUNS = "reports/records/digit_recognizer"
# The targets.
SPEED_TARGET = 0.5  # training time over c619839's, at most
WHOLE_COMMAND_TARGET_S = 300  # README's first command, at most, on 2 cores
SINGLE_TARGET = 0.990  # mean held-out accuracy of the default over seeds, at least
GRID_ENSEMBLE_TARGET = 0.9925


def _pct(value, digits=2) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}"


def _met(ok: bool) -> str:
    return "met" if ok else "missed"


def _machine(record: dict) -> str:
    machine = record.get("machine", {})
    return (f"{machine.get('cpu', machine.get('processor', '?'))}, {machine.get('cpu_count', '?')} cores, "
            f"{machine.get('accelerator') or 'no accelerator'}")


def _runs(records: Records, folder: str) -> list[dict]:
    return [records.json(p) for p in records.glob(f"{RUNS}/{folder}/*.json")]


def _model(record: dict) -> str:
    config = record["model_config"]
    name = f"{_model_name(config)} h{config['hidden']}"
    if config.get("arch", "cnn") != "cnn":
        return f"{config['arch']} {name}"
    return name if _trunk(config) == "strided" else f"{name}, {_trunk(config)} trunk"


# Item 1: the default run's time ------------------------------------------------


def _accuracy_cell(stats) -> str:
    return f"{100 * stats['mean']:.2f} ({100 * stats['min']:.2f}-{100 * stats['max']:.2f})"


def default_run_table(record: dict) -> str:
    """One row per side of a `bench_default_run` record, then the ratio of
    the training times seed by seed."""
    summary = record["summary"]
    rows = []
    for side, label in (("baseline", f"`{record['baseline']}` (before)"), ("current", f"`{record['current']}`")):
        s = summary[side]
        wall, whole = s["wall_time_s"], s["process_s"]
        rows.append([label, f"{wall['median']:.0f} ({wall['min']:.0f}-{wall['max']:.0f})",
                     f"{whole['median']:.0f} ({whole['min']:.0f}-{whole['max']:.0f})",
                     _accuracy_cell(s["validation_accuracy"]), _accuracy_cell(s["test_accuracy"])])
    ratio = summary["training_time_ratio"]
    rows.append(["ratio, seed by seed", f"{ratio['median']:.2f} ({ratio['min']:.2f}-{ratio['max']:.2f})", "", "", ""])
    return markdown_table(["code", "training s, median (range)", "whole command s, median (range)",
                           "validation % mean (range)", "held-out % mean (range)"], rows)


@report_block("README.md", "default-run-speed")
def default_run_speed(records: Records) -> str:
    if not records.glob(SPEED_RECORD):
        return f"Not measured yet (`{SPEED_RECORD}` is not committed)."
    run = records.json(SPEED_RECORD)
    summary = run["summary"]
    ratio = summary["training_time_ratio"]
    whole = summary["current"]["process_s"]
    loads = [r["load_average"][0] for r in run["runs"]]
    within = sum(r <= SPEED_TARGET for r in ratio["per_seed"])
    before, after = summary["baseline"], summary["current"]
    no_lower = after["test_accuracy"]["mean"] >= before["test_accuracy"]["mean"]
    lines = [
        default_run_table(run),
        "",
        f"Seeds {', '.join(map(str, run['seeds']))}, one fresh process per run, the two commits alternating; "
        f"{_machine(run)}; 1-minute load average {min(loads):.1f}-{max(loads):.1f} as the runs ended. "
        f"Training time (the record's `wall_time_s`: build, fit, predict) over `{run['baseline']}`'s, "
        f"seed by seed: median {ratio['median']:.2f}; at most {SPEED_TARGET} on {within} of "
        f"{len(ratio['per_seed'])} seeds ({_met(within == len(ratio['per_seed']))}). "
        f"Accuracy, mean over the seeds: validation {100 * after['validation_accuracy']['mean']:.2f}% against "
        f"{100 * before['validation_accuracy']['mean']:.2f}%, held-out {100 * after['test_accuracy']['mean']:.2f}% "
        f"against {100 * before['test_accuracy']['mean']:.2f}% (held-out no lower: {_met(no_lower)}). "
        f"The whole command, imports and data included, took {whole['median']:.0f} s "
        f"({whole['min']:.0f}-{whole['max']:.0f}) (under {WHOLE_COMMAND_TARGET_S // 60} min: "
        f"{_met(whole['max'] < WHOLE_COMMAND_TARGET_S)}).",
    ]
    return "\n".join(lines)


# The input pipeline's epoch stall ----------------------------------------------

STALL_RECORD = "benchmarks/results/epoch_stall_cpu.json"


def input_pipeline_table(record: dict) -> str:
    """`benchmarks/bench_input_pipeline.py`'s record as a table."""
    result = record["result"]
    rows = []
    for key, label in (("autotune", "`prefetch(AUTOTUNE)`, tf.data defaults (before)"),
                       ("pipeline", "`train.batches`: autotuning off, prefetch 1 (now)")):
        s = result["summary"][key]
        rows.append([label, f"{s['median_s']:.2f} ({s['min_s']:.2f}-{s['max_s']:.2f})",
                     f"{s['stalled_epochs']} of {result['rounds'] - 1}", f"{s['total_s']:.1f}"])
    table = markdown_table(["input", "epoch s, median (range)", "epochs over 1.5x the new median",
                            "all timed epochs s"], rows)
    return (f"{table}\n\n{result['model']}, {result['train_rows']:,} training and "
            f"{result['validation_rows']:,} validation rows, batch {result['batch_size']}; one model, one epoch "
            f"from each input in turn, {result['rounds'] - 1} timed rounds after the first; {_machine(record)}. "
            f"Record `{STALL_RECORD}`.")


@report_block("README.md", "input-pipeline")
def input_pipeline(records: Records) -> str:
    if not records.glob(STALL_RECORD):
        return f"Not measured yet (`{STALL_RECORD}` is not committed)."
    return input_pipeline_table(records.json(STALL_RECORD))


COMPETITION_GRID_RUNS = "reports/records/competition_grid"
# The competition-size grids' run records, one folder each, compared in
# pairs: the input pipeline with tf.data's autotuning on and off (the MoE
# heads then on the dense einsum), and that grid against today's defaults
# (the MoE heads on TensorFlow's dropless engine, test-time augmentation).
AUTOTUNE_GRIDS = (("grid-autotune", "autotuning on (before)"), ("grid-einsum", "autotuning off (after)"))
DROPLESS_GRIDS = (("grid-einsum", "einsum head (before)"), ("grid", "dropless head, TTA (now)"))


def competition_grid_epochs_table(grids: dict[str, list[dict]], pair=AUTOTUNE_GRIDS) -> str:
    """Each grid model's training time, epochs and held-out accuracy in the
    two grids of `pair` (`(folder, label)`, before then after); `grids`
    maps each folder to its run records. A slow epoch takes over 1.5x the
    run's fastest."""
    before, after = ({_model(r): r for r in grids[folder] if r.get("kind") != "ensemble"}
                     for folder, _ in pair)
    rows = []
    for name, now in after.items():
        old = before[name]
        cells = [name]
        for run in (old, now):
            epochs = run["timings"]["epoch_s"]
            cells += [f"{run['wall_time_s']:.0f}", _spread(epochs, 1),
                      f"{sum(e > 1.5 * min(epochs) for e in epochs)} of {len(epochs)}"]
        cells += [f"{now['wall_time_s'] / old['wall_time_s']:.2f}",
                  f"{_pct(old['test_accuracy'])} / {_pct(now['test_accuracy'])}"]
        rows.append(cells)
    header = ["model"]
    for _, label in pair:
        header += [f"{label}: training s", "epoch s, median (range)", "slow epochs"]
    header += ["training after over before", "held-out % (before / after)"]
    return markdown_table(header, rows)


def _competition_grids(records: Records, pair) -> dict[str, list[dict]]:
    return {folder: [records.json(p) for p in records.glob(f"{COMPETITION_GRID_RUNS}/{folder}/*.json")]
            for folder, _ in pair}


@report_block("benchmarks/COMPETITION.md", "competition-grid-epochs")
def competition_grid_epochs(records: Records) -> str:
    grids = _competition_grids(records, AUTOTUNE_GRIDS)
    if not all(grids.values()):
        return f"Not recorded yet (`{COMPETITION_GRID_RUNS}/`)."
    machine = _machine(grids["grid-einsum"][0])
    return (f"{competition_grid_epochs_table(grids)}\n\nThe six models of `--grid` on the 42,000-row CSVs, 32 "
            f"epochs each, seed 0; the two grids ran on different days ({machine}); nothing else ran beside the "
            f"first, and short probes and unit tests ran beside the second for a few minutes of MoE(1,5) h64's "
            f"and MoE(3,5) h64's training. A slow epoch takes over 1.5x its run's fastest. Records: "
            f"`{COMPETITION_GRID_RUNS}/grid-autotune/` and `{COMPETITION_GRID_RUNS}/grid-einsum/` (the runs' own "
            f"records; the benchmark's are `benchmarks/results/competition_grid_cpu_autotune.json` and "
            f"`benchmarks/results/competition_grid_cpu_einsum.json`).")


def _tta_gains(runs: list[dict]) -> str:
    """Each run's held-out accuracy with test-time augmentation minus
    without, in pp, as `model +x.xx` items."""
    gains = [f"{_model(r)} {100 * (r['tta']['test_accuracy'] - r['tta']['test_accuracy_without']):+.2f}"
             for r in runs if r.get("kind") != "ensemble" and r.get("tta")]
    return ", ".join(gains)


@report_block("benchmarks/COMPETITION.md", "competition-grid-dropless")
def competition_grid_dropless(records: Records) -> str:
    grids = _competition_grids(records, DROPLESS_GRIDS)
    if not all(grids.values()):
        return f"Not recorded yet (`{COMPETITION_GRID_RUNS}/grid/`)."
    machine = _machine(grids["grid"][0])
    ensembles = {folder: next((r for r in runs if r.get("kind") == "ensemble"), None)
                 for folder, runs in grids.items()}
    ensemble_line = " / ".join(_pct(e and e.get("test_accuracy")) for e in ensembles.values())
    return (f"{competition_grid_epochs_table(grids, DROPLESS_GRIDS)}\n\nThe six models of `--grid` on the "
            f"42,000-row CSVs, 32 epochs each, seed 0, on different days ({machine}), so their times compare only "
            f"within a grid. The ensembles (mean of the six) score {ensemble_line}% held-out (before / after). "
            f"Held-out accuracy with test-time augmentation minus without, in the later grid's runs, pp: "
            f"{_tta_gains(grids['grid'])}. Records: `{COMPETITION_GRID_RUNS}/grid-einsum/` and "
            f"`{COMPETITION_GRID_RUNS}/grid/` (the runs' own records; the benchmark's are "
            f"`benchmarks/results/competition_grid_cpu_einsum.json` and `benchmarks/results/competition_grid_cpu.json`).")


# The recipe screen (validation only) --------------------------------------------


def _paired_cell(values, base, scale=1.0, digits=2) -> str:
    """Mean of `values` minus `base`, seed by seed, with its 95% t interval."""
    mean, low, high = t_interval([scale * (v - b) for v, b in zip(values, base)])
    # Rounded, + 0.0: a mean that rounds to zero prints as +0.00, not -0.00.
    return f"{round(mean, digits) + 0.0:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"


def _screen_table(run: dict, unit: str) -> str:
    """The table of a screen record, one row per arm: each arm's validation
    accuracy and loss against its control's, paired by `unit` ("seed" or
    "fold"). An arm's control is the `base` arm unless the record's
    `config.controls` names another (an arm run at a later commit pairs
    with that commit's own default)."""
    by_arm: dict[str, dict[int, dict]] = {}
    for r in run["runs"]:
        by_arm.setdefault(r["arm"], {})[r[unit]] = r
    controls = run["config"].get("controls", {})
    rows = []
    for arm, by_unit in by_arm.items():
        control = controls.get(arm, "base")
        paired = by_arm[control]
        against = "" if control == "base" else f" (minus `{control}`)"
        units = sorted(set(by_unit) & set(paired))
        accuracy = [by_unit[u]["val_acc"] for u in units]
        loss = [by_unit[u]["val_nll"] for u in units]
        rows.append([
            f"`{arm}`", run["config"]["arms"][arm], ", ".join(map(str, units)),
            f"{100 * statistics.fmean(accuracy):.2f} ({100 * min(accuracy):.2f}-{100 * max(accuracy):.2f})",
            "-" if arm == control else _paired_cell(accuracy, [paired[u]["val_acc"] for u in units], 100) + against,
            f"{statistics.fmean(loss):.4f}",
            "-" if arm == control else _paired_cell(loss, [paired[u]["val_nll"] for u in units], digits=4) + against,
            f"{statistics.median(statistics.median(by_unit[u]['epoch_s'][1:]) for u in units):.2f}",
        ])
    return markdown_table(["arm", "recipe", f"{unit}s", "validation % mean (range)", "minus base, pp [95% t]",
                           "validation loss mean", "minus base [95% t]", "epoch s (median)"], rows)


@report_block("reports/digit_recognizer_grid.md", "recipe-screen")
def recipe_screen(records: Records) -> str:
    if not records.glob(SCREEN_RECORD):
        return f"No screen is recorded yet (`{SCREEN_RECORD}`)."
    run = records.json(SCREEN_RECORD)
    table = _screen_table(run, "seed")
    return (f"{table}\n\nMoE(3,5) h64, 32 epochs; each seed's own 400-image validation split; "
            f"the loss is the mean negative log-likelihood (label smoothing raises it by construction). "
            f"Epoch s: the median over seeds of each run's median epoch after the first; {_machine(run)}. "
            f"Record `{SCREEN_RECORD}`.")


@report_block("reports/digit_recognizer_grid.md", "cv-screen")
def cv_screen(records: Records) -> str:
    if not records.glob(CV_SCREEN_RECORD):
        return f"No cross-validated screen is recorded yet (`{CV_SCREEN_RECORD}`)."
    run = records.json(CV_SCREEN_RECORD)
    table = _screen_table(run, "fold")
    tta = [100 * (r["val_acc_tta"] - r["val_acc"]) for r in run["runs"] if "val_acc_tta" in r]
    mean, low, high = t_interval(tta)
    return (f"{table}\n\nMoE(3,5) h64; fold f of a stratified 4-fold split of the 4,000 training digits "
            f"(3,000 train, 1,000 validation, seed f); a row's pairs are its folds against its control's (base's, unless the row names another). "
            f"Test-time augmentation (the mean over the image and its four one-pixel shifts) minus the "
            f"plain prediction, over the {len(tta)} runs that recorded both: {mean:+.2f} pp, 95% t interval "
            f"[{low:+.2f}, {high:+.2f}]. Epoch s: the median over folds of each run's median epoch after the "
            f"first; {_machine(run)}. Record `{CV_SCREEN_RECORD}`.")


@report_block("reports/digit_recognizer_grid.md", "cv-grid-ensemble")
def cv_grid_ensemble(records: Records) -> str:
    if not records.glob(GRID_ENSEMBLE_SCREEN_RECORD):
        return f"No grid-ensemble screen is recorded yet (`{GRID_ENSEMBLE_SCREEN_RECORD}`)."
    run = records.json(GRID_ENSEMBLE_SCREEN_RECORD)
    by_arm: dict[str, dict[int, dict]] = {}
    for r in run["runs"]:
        by_arm.setdefault(r["arm"], {})[r["fold"]] = r
    base = by_arm["shared"]
    rows = []
    for arm, by_fold in by_arm.items():
        folds = sorted(set(by_fold) & set(base))
        accuracy = [by_fold[f]["val_acc"] for f in folds]
        members = [m["acc"] for f in folds for m in by_fold[f]["members"]]
        rows.append([
            f"`{arm}`", run["config"]["arms"][arm], ", ".join(map(str, folds)),
            f"{100 * statistics.fmean(accuracy):.2f} ({100 * min(accuracy):.2f}-{100 * max(accuracy):.2f})",
            "-" if arm == "shared" else _paired_cell(accuracy, [base[f]["val_acc"] for f in folds], 100),
            f"{100 * statistics.fmean(members):.2f} ({100 * min(members):.2f}-{100 * max(members):.2f})",
            f"{statistics.fmean(by_fold[f]['val_nll'] for f in folds):.4f}",
        ])
    table = markdown_table(["arm", "members", "folds", "ensemble validation % mean (range)",
                            "minus shared, pp [95% t]", "members' validation % mean (range)",
                            "ensemble validation loss mean"], rows)
    return (f"{table}\n\nThe six models of `--grid`, each trained on fold f's 3,000 digits (its own "
            f"stratified 90/10 split of them for early stopping), averaged and scored on the fold's 1,000; "
            f"the folds of the cross-validated screen; {_machine(run)}. Record `{GRID_ENSEMBLE_SCREEN_RECORD}`.")


# Item 2: the default against its dense baseline ------------------------------


def _by_model_and_seed(runs: list[dict]) -> dict[str, dict[int, dict]]:
    table: dict[str, dict[int, dict]] = {}
    for run in runs:
        table.setdefault(_model(run), {})[run["seed"]] = run
    return table


@report_block("README.md", "pipeline-seeds")
def pipeline_seeds(records: Records) -> str:
    runs = _runs(records, "default")
    if not runs:
        return f"No run is recorded under `{RUNS}/default/` yet."
    table = _by_model_and_seed(runs)
    moe = next((name for name in table if name.startswith("MoE")), None)
    dense = next((name for name in table if name.startswith("dense")), None)
    rows = []
    for name, by_seed in table.items():
        seeds = sorted(by_seed)
        test = [by_seed[s]["test_accuracy"] for s in seeds]
        rows.append([name, ", ".join(map(str, seeds)), " / ".join(_pct(a) for a in test),
                     f"{100 * statistics.fmean(test):.2f}",
                     f"{100 * statistics.fmean(by_seed[s]['validation_accuracy'] for s in seeds):.2f}",
                     f"{by_seed[seeds[0]]['params_total']:,} / {by_seed[seeds[0]]['params_active']:,}",
                     _spread([by_seed[s]["wall_time_s"] for s in seeds], 0)])
    text = [markdown_table(["model", "seeds", "held-out % per seed", "held-out % mean", "validation % mean",
                            "params total / active", "training s, median (range)"], rows)]
    if moe and dense:
        shared = sorted(set(table[moe]) & set(table[dense]))
        gaps = [100 * (table[moe][s]["test_accuracy"] - table[dense][s]["test_accuracy"]) for s in shared]
        mean, low, high = t_interval(gaps)
        moe_mean = statistics.fmean(table[moe][s]["test_accuracy"] for s in table[moe])
        text += ["", (
            f"{moe} minus {dense}, seed by seed on the held-out digits: {', '.join(f'{g:+.2f}' for g in gaps)} pp, "
            f"mean {mean:+.2f} pp, 95% t interval [{low:+.2f}, {high:+.2f}] over {len(gaps)} seeds. "
            f"Mean held-out accuracy of {moe}: {100 * moe_mean:.2f}% "
            f"(target at least {100 * SINGLE_TARGET:.1f}%: {_met(moe_mean >= SINGLE_TARGET)}). "
            f"One held-out digit is 0.1 pp."
        )]
    return "\n".join(text)


# Item 3: the grid and its ensemble -------------------------------------------


def _ensemble_row(label: str, ensemble: dict) -> list:
    """A row of the grid table for an ensemble record: no seed, no epochs,
    and its members' training time."""
    return [label, "-", f"{_pct(ensemble['validation_accuracy'])} (out-of-bag, {ensemble['validation_rows']} rows)",
            _pct(ensemble["test_accuracy"]), f"{ensemble['params_total']:,} / {ensemble['params_active']:,}", "-",
            f"{ensemble['members_wall_time_s']:.0f} (members)"]


@report_block("README.md", "pipeline-grid")
def pipeline_grid(records: Records) -> str:
    runs = _runs(records, "grid")
    if not runs:
        return f"No `--grid` run is recorded under `{RUNS}/grid/` yet."
    members = [r for r in runs if r.get("kind") != "ensemble"]
    ensembles = [r for r in runs if r.get("kind") == "ensemble"]
    rows = [[_model(r), r["seed"], _pct(r["validation_accuracy"]), _pct(r["test_accuracy"]),
             f"{r['params_total']:,} / {r['params_active']:,}", r["epochs_run"], f"{r['wall_time_s']:.0f}"]
            for r in sorted(members, key=lambda r: (r["model_config"]["moe"] is None, str(r["model_config"]["moe"]), r["model_config"]["hidden"]))]
    rows += [_ensemble_row(f"grid-ensemble (mean of {len(e['members'])} softmax outputs)", e) for e in ensembles]
    seed_ensembles = [r for r in _runs(records, "ensemble") if r.get("kind") == "ensemble"]
    rows += [_ensemble_row(f"{', '.join(sorted(set(e['member_names'])))}: mean of seeds "
                           f"{', '.join(map(str, e['member_seeds']))}", e) for e in seed_ensembles]
    text = [markdown_table(["model", "seed", "validation %", "held-out %", "params total / active",
                            "epochs", "training s"], rows)]
    for e in seed_ensembles:
        text += ["", (f"The seed ensemble scores {_pct(e['test_accuracy'])}% held-out; its members scored "
                      f"{', '.join(_pct(a) for a in e['member_test_accuracy'])}%.")]
    for e in ensembles:
        best = max(m["test_accuracy"] for m in members)
        text += ["", (f"The grid's ensemble scores {_pct(e['test_accuracy'])}% on the held-out digits against "
                      f"{_pct(best)}% for its best member (target at least {100 * GRID_ENSEMBLE_TARGET:.2f}%: "
                      f"{_met(e['test_accuracy'] >= GRID_ENSEMBLE_TARGET)}); one seed of each model, "
                      f"{_machine(members[0])}.")]
    return "\n".join(text)


# Options: TTA, pseudo-labels, determinism --------------------------------------


def _gaps(pairs) -> str:
    """`(without, with)` accuracy pairs as seed-by-seed gaps in points, their
    mean and, from two seeds on, its 95% t interval."""
    gaps = [100 * (after - before) for before, after in pairs]
    mean, low, high = t_interval(gaps)
    interval = "" if len(gaps) < 2 else f", 95% t interval [{low:+.2f}, {high:+.2f}]"
    return f"{', '.join(f'{g:+.2f}' for g in gaps)} pp seed by seed, mean {mean:+.2f}{interval}"


def _paired_line(what, test_pairs, validation_pairs) -> str:
    return f"{what}: {_gaps(test_pairs)}; on validation {_gaps(validation_pairs)}."


@report_block("README.md", "pipeline-options")
def pipeline_options(records: Records) -> str:
    runs = _runs(records, "options")
    # TTA is the default: every default run records its predictions with
    # and without it. An options/ run with TTA and no other option is one
    # from before it was.
    tta = sorted([("TTA (default)", r) for r in _runs(records, "default") if r.get("tta") and r["model_config"]["moe"]]
                 + [("`--tta`", r) for r in runs if r.get("tta") and not r.get("pseudo_label")
                    and not r["train_config"].get("deterministic")],
                 key=lambda labelled: labelled[1]["seed"])
    pseudo = sorted((r for r in runs if r.get("pseudo_label")), key=lambda r: r["seed"])
    deterministic = [r for r in runs if r["train_config"].get("deterministic")]
    if not (tta or pseudo or deterministic):
        return f"No run with `--tta`, `--pseudo-label` or `--deterministic` is recorded under `{RUNS}/options/` yet."
    rows, lines = [], []
    for label, r in tta:
        t = r["tta"]
        rows.append([label, r["seed"], f"{_pct(t['validation_accuracy_without'])} -> {_pct(t['validation_accuracy'])}",
                     f"{_pct(t['test_accuracy_without'])} -> {_pct(t['test_accuracy'])}",
                     f"{len(t['shifts'])} views"])
    for r in pseudo:
        p, first = r["pseudo_label"], r["pseudo_label"]["first_pass"]
        rows.append([f"`--pseudo-label {p['threshold']:g}`", r["seed"],
                     f"{_pct(first['validation_accuracy'])} -> {_pct(r['validation_accuracy'])}",
                     f"{_pct(first['test_accuracy'])} -> {_pct(r['test_accuracy'])}",
                     f"{p['test_images']} of {p['test_rows']} test images labelled; {r['wall_time_s']:.0f} s for both fits"])
    if tta:
        lines.append(_paired_line(
            "TTA on the held-out digits",
            [(r["tta"]["test_accuracy_without"], r["tta"]["test_accuracy"]) for _, r in tta],
            [(r["tta"]["validation_accuracy_without"], r["tta"]["validation_accuracy"]) for _, r in tta]))
    if pseudo:
        lines.append(_paired_line(
            "Pseudo-labels on the held-out digits (retrained minus first pass)",
            [(r["pseudo_label"]["first_pass"]["test_accuracy"], r["test_accuracy"]) for r in pseudo],
            [(r["pseudo_label"]["first_pass"]["validation_accuracy"], r["validation_accuracy"]) for r in pseudo]))
    # Each --deterministic run against the run of the same seed, model and
    # recipe without it (the default of its day: default/, or an earlier
    # default's folder).
    plain_runs = [run for folder in DEFAULT_FOLDERS for run in _runs(records, folder)]
    recipe = ("epochs", "batch_size", "learning_rate", "tta")
    for r in deterministic:
        plain = next((p for p in plain_runs if p["seed"] == r["seed"] and p["model_config"] == r["model_config"]
                      and all(p["train_config"].get(k) == r["train_config"].get(k) for k in recipe)), None)
        if plain is None:
            raise RecordError(f"the --deterministic run of seed {r['seed']} has no run of the same seed, model and "
                              f"recipe (epochs, batch size, learning rate, TTA) without it under "
                              f"{', '.join(f'{RUNS}/{f}/' for f in DEFAULT_FOLDERS)}")
        rows.append(["`--deterministic`", r["seed"], f"{_pct(plain['validation_accuracy'])} -> {_pct(r['validation_accuracy'])}",
                     f"{_pct(plain['test_accuracy'])} -> {_pct(r['test_accuracy'])}",
                     f"{r['wall_time_s']:.0f} s against {plain['wall_time_s']:.0f} s without "
                     f"({r['wall_time_s'] / plain['wall_time_s']:.2f}x, separate processes)"])
    table = markdown_table(["option", "seed", "validation % (without -> with)", "held-out % (without -> with)", "note"], rows)
    return "\n".join([table, "", *lines]) if lines else table
