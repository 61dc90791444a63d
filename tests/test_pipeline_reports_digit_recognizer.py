"""`pipelines.reports.digit_recognizer`: README's pipeline blocks from run
records. Expected numbers are worked out by hand from the records below."""

import json

import pytest

from pipelines.reports import Records
from pipelines.reports import RecordError
from pipelines.reports import digit_recognizer as blocks

MACHINE = {"processor": "x86_64", "cpu_count": 2, "accelerator": None}


def _run(moe, hidden, seed, test, validation=0.98, wall=60.0, **extra):
    return {
        "name": f"run-{moe}-{hidden}-{seed}", "seed": seed,
        "model_config": {"arch": "cnn", "moe": moe, "hidden": hidden, "trunk": "strided"},
        "train_config": {"deterministic": False}, "train_accuracy": 0.999, "validation_accuracy": validation,
        "test_accuracy": test, "params_total": 1000, "params_active": 600, "epochs_run": 20,
        "wall_time_s": wall, "machine": MACHINE, **extra,
    }


def _write_record(root, relative_path, record):
    path = root / relative_path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))


def _write(root, folder, name, record):
    _write_record(root, f"{blocks.RUNS}/{folder}/{name}.json", record)


def test_seeds_block_pairs_moe_and_dense_by_seed(tmp_path):
    # MoE minus dense: +0.2, +0.4, 0.0 pp; mean +0.2, sd 0.2,
    # t(0.975, 2) = 4.303 -> half width 4.303 * 0.2 / sqrt(3) = 0.497.
    for seed, (moe, dense) in enumerate([(0.991, 0.989), (0.992, 0.988), (0.990, 0.990)]):
        _write(tmp_path, "default", f"moe-{seed}", _run([3, 5], 64, seed, moe))
        _write(tmp_path, "default", f"dense-{seed}", _run(None, 192, seed, dense))
    text = blocks.pipeline_seeds(Records(tmp_path))
    assert "| MoE(3,5) h64 | 0, 1, 2 | 99.10 / 99.20 / 99.00 | 99.10 |" in text
    assert "| dense h192 | 0, 1, 2 | 98.90 / 98.80 / 99.00 | 98.90 |" in text
    assert "+0.20, +0.40, +0.00 pp, mean +0.20 pp, 95% t interval [-0.30, +0.70] over 3 seeds" in text
    assert "99.10% (target at least 99.0%: met)" in text


def test_records_from_before_the_trunk_field_are_labelled_pool_trunk(tmp_path):
    old = _run([3, 5], 64, 0, 0.99)
    old["model_config"].pop("trunk")
    _write(tmp_path, "default", "moe-0", old)
    assert "| MoE(3,5) h64, pool trunk | 0 |" in blocks.pipeline_seeds(Records(tmp_path))


def test_seeds_block_says_missed_below_the_target(tmp_path):
    for seed, accuracy in enumerate([0.989, 0.990, 0.988]):
        _write(tmp_path, "default", f"moe-{seed}", _run([3, 5], 64, seed, accuracy))
        _write(tmp_path, "default", f"dense-{seed}", _run(None, 192, seed, accuracy))
    assert "98.90% (target at least 99.0%: missed)" in blocks.pipeline_seeds(Records(tmp_path))


def test_speed_block_checks_every_seed_and_the_whole_command(tmp_path):
    def side(wall, process):
        return {"wall_time_s": {"median": wall, "min": wall - 1, "max": wall + 1},
                "process_s": {"median": process, "min": process - 2, "max": process + 2},
                "validation_accuracy": {"mean": 0.985, "median": 0.985, "min": 0.98, "max": 0.99},
                "test_accuracy": {"mean": 0.99, "median": 0.99, "min": 0.988, "max": 0.992}}

    record = {
        "baseline": "c619839", "current": "abc1234", "seeds": [0, 1], "machine": MACHINE,
        "runs": [{"load_average": [1.5, 1, 1]}, {"load_average": [2.5, 1, 1]}],
        "summary": {"baseline": side(200, 230), "current": side(90, 120),
                    "training_time_ratio": {"per_seed": [0.45, 0.52], "median": 0.485, "min": 0.45, "max": 0.52}},
    }
    _write_record(tmp_path, blocks.SPEED_RECORD, record)
    text = blocks.default_run_speed(Records(tmp_path))
    assert "| `c619839` (before) | 200 (199-201) | 230 (228-232) | 98.50 (98.00-99.00) | 99.00 (98.80-99.20) |" in text
    assert "| ratio, seed by seed | 0.48 (0.45-0.52) |" in text
    # One seed over 0.5: the target is missed, and the line says on how many it held.
    assert "median 0.48; at most 0.5 on 1 of 2 seeds (missed)" in text
    assert "held-out 99.00% against 99.00% (held-out no lower: met)" in text
    assert "took 120 s (118-122) (under 5 min: met)" in text
    assert "load average 1.5-2.5" in text


def test_grid_block_compares_the_ensemble_with_its_best_member(tmp_path):
    _write(tmp_path, "grid", "a", _run([3, 5], 64, 0, 0.990))
    _write(tmp_path, "grid", "b", _run(None, 64, 0, 0.987))
    _write(tmp_path, "grid", "grid-ensemble", {
        "kind": "ensemble", "members": ["a.json", "b.json"], "validation_accuracy": 0.9875, "validation_rows": 400,
        "test_accuracy": 0.993, "params_total": 2000, "params_active": 1200, "members_wall_time_s": 120.0})
    _write(tmp_path, "ensemble", "seeds", {
        "kind": "ensemble", "member_names": ["m", "m"], "member_seeds": [0, 1], "member_test_accuracy": [0.99, 0.988],
        "validation_accuracy": 0.99, "validation_rows": 780, "test_accuracy": 0.991, "params_total": 2000,
        "params_active": 1200, "members_wall_time_s": 100.0})
    text = blocks.pipeline_grid(Records(tmp_path))
    assert "| m: mean of seeds 0, 1 | - | 99.00 (out-of-bag, 780 rows) | 99.10 |" in text
    assert "The seed ensemble scores 99.10% held-out; its members scored 99.00, 98.80%." in text
    assert "| grid-ensemble (mean of 2 softmax outputs) | - | 98.75 (out-of-bag, 400 rows) | 99.30 |" in text
    assert "99.30% on the held-out digits against 99.00% for its best member (target at least 99.25%: met)" in text


def test_options_block_pairs_each_option_with_its_own_without(tmp_path):
    for seed, (without, with_) in enumerate([(0.990, 0.992), (0.989, 0.990)]):
        tta = {"shifts": [[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], "test_accuracy": with_,
               "test_accuracy_without": without, "validation_accuracy": 0.99, "validation_accuracy_without": 0.99}
        _write(tmp_path, "options", f"tta-{seed}", _run([3, 5], 64, seed, with_, tta=tta))
    pseudo = {"threshold": 0.99, "test_images": 950, "test_rows": 1000, "retrained": True,
              "first_pass": {"validation_accuracy": 0.985, "test_accuracy": 0.990}}
    _write(tmp_path, "options", "pseudo-0", _run([3, 5], 64, 0, 0.989, validation=0.9875, pseudo_label=pseudo))
    text = blocks.pipeline_options(Records(tmp_path))
    assert "| `--tta` | 0 | 99.00 -> 99.00 | 99.00 -> 99.20 | 5 views |" in text
    # +0.2 and +0.1 pp: mean +0.15, sd 0.0707, t(0.975, 1) = 12.706 -> half width 0.635.
    assert "TTA on the held-out digits: +0.20, +0.10 pp seed by seed, mean +0.15, 95% t interval [-0.49, +0.79]" in text
    assert "| `--pseudo-label 0.99` | 0 | 98.50 -> 98.75 | 99.00 -> 98.90 | 950 of 1000 test images labelled" in text
    assert "(retrained minus first pass): -0.10 pp seed by seed, mean -0.10" in text


def test_options_block_reads_tta_from_the_default_runs(tmp_path):
    def tta(without, with_):
        return {"shifts": [[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], "test_accuracy": with_,
                "test_accuracy_without": without, "validation_accuracy": 0.9875, "validation_accuracy_without": 0.985}

    # TTA is the default: the default runs carry both predictions. The dense
    # baseline's runs and a pseudo-label run (also with TTA) are not TTA rows.
    _write(tmp_path, "default", "moe-1", _run([3, 5], 64, 1, 0.993, tta=tta(0.990, 0.993)))
    _write(tmp_path, "default", "dense-1", _run(None, 192, 1, 0.980, tta=tta(0.985, 0.980)))
    pseudo = {"threshold": 0.99, "test_images": 950, "test_rows": 1000, "retrained": True,
              "first_pass": {"validation_accuracy": 0.985, "test_accuracy": 0.990}}
    _write(tmp_path, "options", "pseudo-1", _run([3, 5], 64, 1, 0.989, pseudo_label=pseudo, tta=tta(0.98, 0.97)))
    text = blocks.pipeline_options(Records(tmp_path))
    assert "| TTA (default) | 1 | 98.50 -> 98.75 | 99.00 -> 99.30 | 5 views |" in text
    assert text.count("5 views") == 1
    assert "TTA on the held-out digits: +0.30 pp seed by seed, mean +0.30; on validation +0.25 pp" in text


def test_deterministic_run_needs_its_default_run(tmp_path):
    _write(tmp_path, "options", "det-0", {**_run([3, 5], 64, 0, 0.99, wall=90.0),
                                          "train_config": {"deterministic": True}})
    with pytest.raises(RecordError, match="seed 0 has no run of the same seed, model and recipe"):
        blocks.pipeline_options(Records(tmp_path))
    # A run of another trunk is not its pair; the same model in default-pool/ is.
    other = _run([3, 5], 64, 0, 0.99, wall=50.0)
    other["model_config"]["trunk"] = "pool"
    _write(tmp_path, "default", "moe-0", other)
    with pytest.raises(RecordError, match="seed 0 has no run"):
        blocks.pipeline_options(Records(tmp_path))
    # Nor is one of another batch size.
    _write(tmp_path, "default-b64", "moe-0", {**_run([3, 5], 64, 0, 0.99, wall=40.0),
                                              "train_config": {"deterministic": False, "batch_size": 64}})
    with pytest.raises(RecordError, match="seed 0 has no run"):
        blocks.pipeline_options(Records(tmp_path))
    # Nor is one that predicted with TTA when the deterministic run did not.
    _write(tmp_path, "default", "moe-0-tta", {**_run([3, 5], 64, 0, 0.99, wall=45.0),
                                             "train_config": {"deterministic": False, "tta": True}})
    with pytest.raises(RecordError, match="seed 0 has no run"):
        blocks.pipeline_options(Records(tmp_path))
    _write(tmp_path, "default-pool", "moe-0", _run([3, 5], 64, 0, 0.99, wall=60.0))
    assert "90 s against 60 s without (1.50x, separate processes)" in blocks.pipeline_options(Records(tmp_path))


def test_blocks_say_what_is_not_recorded(tmp_path):
    records = Records(tmp_path)
    assert "not committed" in blocks.default_run_speed(records)
    assert "No run is recorded" in blocks.pipeline_seeds(records)
    assert "No `--grid` run" in blocks.pipeline_grid(records)
    assert "No run with `--tta`" in blocks.pipeline_options(records)


def test_recipe_screen_pairs_each_arm_with_base_by_seed(tmp_path):
    def run(arm, seed, accuracy, loss, epochs):
        return {"arm": arm, "seed": seed, "val_acc": accuracy, "val_nll": loss, "epoch_s": epochs}

    record = {"config": {"arms": {"base": "batch 64", "b128": "batch 128"}}, "machine": MACHINE, "runs": [
        run("base", 0, 0.9800, 0.060, [3.0, 1.3, 1.2, 1.4]),
        run("base", 1, 0.9850, 0.050, [3.0, 1.3, 1.3, 1.3]),
        run("b128", 0, 0.9825, 0.070, [3.0, 1.1, 1.0, 1.2]),
        run("b128", 1, 0.9900, 0.040, [3.0, 1.2, 1.2, 1.1]),
    ]}
    _write_record(tmp_path, blocks.SCREEN_RECORD, record)
    text = blocks.recipe_screen(Records(tmp_path))
    # Gaps +0.25 and +0.50 pp: mean +0.375, sd 0.1768, t(0.975, 1) = 12.706
    # -> half width 12.706 * 0.1768 / sqrt(2) = 1.588. Losses: +0.01, -0.01.
    # Epoch medians after the first: 1.1 and 1.2 -> 1.15; base 1.3 and 1.3.
    assert ("| `b128` | batch 128 | 0, 1 | 98.62 (98.25-99.00) | +0.38 [-1.21, +1.96] | 0.0550 "
            "| +0.0000 [-0.1271, +0.1271] | 1.15 |") in text
    assert "| `base` | batch 64 | 0, 1 | 98.25 (98.00-98.50) | - | 0.0550 | - | 1.30 |" in text


def test_cv_screen_pairs_arms_by_fold_and_summarises_tta(tmp_path):
    def run(arm, fold, accuracy, tta=None):
        record = {"arm": arm, "fold": fold, "val_acc": accuracy, "val_nll": 0.05, "epoch_s": [3.0, 1.0, 1.0]}
        if tta is not None:
            record["val_acc_tta"] = tta
        return record

    record = {"config": {"arms": {"base": "default", "deep": "deep trunk"}}, "machine": MACHINE, "runs": [
        # Fold 2 of deep is missing: it pairs on folds 0 and 1 only.
        run("base", 0, 0.985), run("base", 1, 0.990, tta=0.991), run("base", 2, 0.970, tta=0.973),
        run("deep", 0, 0.986), run("deep", 1, 0.987, tta=0.989),
    ]}
    _write_record(tmp_path, blocks.CV_SCREEN_RECORD, record)
    text = blocks.cv_screen(Records(tmp_path))
    # Gaps +0.1 and -0.3 pp: mean -0.1, sd 0.2828 -> half width 12.706 * 0.2 = 2.54.
    assert "| `deep` | deep trunk | 0, 1 | 98.65 (98.60-98.70) | -0.10 [-2.64, +2.44] |" in text
    assert "| `base` | default | 0, 1, 2 | 98.17 (97.00-99.00) | - |" in text
    # TTA gains +0.1, +0.3, +0.2 pp over the 3 runs that have both: mean +0.2, sd 0.1,
    # t(0.975, 2) = 4.303 -> half width 0.248.
    assert "over the 3 runs that recorded both: +0.20 pp, 95% t interval [-0.05, +0.45]" in text
    assert "No cross-validated screen" in blocks.cv_screen(Records(tmp_path / "empty"))


def test_cv_screen_pairs_an_arm_with_the_control_its_record_names(tmp_path):
    def run(arm, fold, accuracy):
        return {"arm": arm, "fold": fold, "val_acc": accuracy, "val_acc_tta": accuracy, "val_nll": 0.05,
                "epoch_s": [3.0, 1.0, 1.0]}

    arms = {"base": "default", "default": "default, later", "ema": "averaged"}
    record = {"config": {"arms": arms, "controls": {"ema": "default"}}, "machine": MACHINE, "runs": [
        run("base", 0, 0.990), run("base", 1, 0.990),
        run("default", 0, 0.980), run("default", 1, 0.985),
        run("ema", 0, 0.981), run("ema", 1, 0.988),
    ]}
    _write_record(tmp_path, blocks.CV_SCREEN_RECORD, record)
    text = blocks.cv_screen(Records(tmp_path))
    # ema minus default: +0.1 and +0.3 pp, mean +0.2, sd 0.1414 -> half width 12.706 * 0.1 = 1.27.
    assert "| `ema` | averaged | 0, 1 | 98.45 (98.10-98.80) | +0.20 [-1.07, +1.47] (minus `default`) |" in text
    # default has no control named: it pairs with base (-1.0 and -0.5 pp).
    assert "| `default` | default, later | 0, 1 | 98.25 (98.00-98.50) | -0.75 [-3.93, +2.43] |" in text


def test_grid_ensemble_screen_pairs_bagged_with_shared_by_fold(tmp_path):
    def run(arm, fold, accuracy, members):
        return {"arm": arm, "fold": fold, "val_acc": accuracy, "val_nll": 0.04,
                "members": [{"acc": a} for a in members]}

    record = {"config": {"arms": {"shared": "one seed", "bagged": "own seeds"}}, "machine": MACHINE, "runs": [
        run("shared", 0, 0.988, [0.981, 0.985]), run("bagged", 0, 0.986, [0.980, 0.982]),
        run("shared", 1, 0.984, [0.978, 0.984]), run("bagged", 1, 0.984, [0.974, 0.984]),
    ]}
    _write_record(tmp_path, blocks.GRID_ENSEMBLE_SCREEN_RECORD, record)
    text = blocks.cv_grid_ensemble(Records(tmp_path))
    # Gaps -0.2 and 0.0 pp: mean -0.1, sd 0.1414 -> half width 12.706 * 0.1 = 1.27.
    assert "| `bagged` | own seeds | 0, 1 | 98.50 (98.40-98.60) | -0.10 [-1.37, +1.17] | 98.00 (97.40-98.40) | 0.0400 |" in text
    assert "| `shared` | one seed | 0, 1 | 98.60 (98.40-98.80) | - | 98.20 (97.80-98.50) | 0.0400 |" in text
    assert "No grid-ensemble screen" in blocks.cv_grid_ensemble(Records(tmp_path / "empty"))


def test_competition_grid_epochs_pairs_models_and_counts_slow_epochs(tmp_path):
    def run(folder, hidden, wall, epochs, accuracy=0.9):
        record = {"model_config": {"moe": None, "hidden": hidden, "arch": "cnn", "trunk": "strided"}, "wall_time_s": wall,
                  "timings": {"epoch_s": epochs}, "test_accuracy": accuracy, "machine": MACHINE}
        _write_record(tmp_path, f"{blocks.COMPETITION_GRID_RUNS}/{folder}/cnn-dense-h{hidden}.json", record)

    assert "Not recorded yet" in blocks.competition_grid_epochs(Records(tmp_path))
    # Before: 10, 20, 16 s; slow means over 1.5 x 10 = 15 s: two of three.
    run("grid-autotune", 64, 60.0, [10.0, 20.0, 16.0])
    run("grid-einsum", 64, 30.0, [10.0, 11.0, 14.0])
    text = blocks.competition_grid_epochs(Records(tmp_path))
    assert "| dense h64 | 60 | 16.0 (10.0-20.0) | 2 of 3 | 30 | 11.0 (10.0-14.0) | 0 of 3 | 0.50 | 90.00 / 90.00 |" in text


def test_competition_grid_dropless_pairs_grids_and_reports_tta_and_ensembles(tmp_path):
    def write(name, record):
        _write_record(tmp_path, f"{blocks.COMPETITION_GRID_RUNS}/{name}", record)

    def run(grid, wall, accuracy, tta=None):
        record = {"model_config": {"moe": None, "hidden": 64, "arch": "cnn", "trunk": "strided"},
                  "wall_time_s": wall, "timings": {"epoch_s": [10.0, 12.0]}, "test_accuracy": accuracy,
                  "machine": MACHINE}
        if tta is not None:
            record["tta"] = {"test_accuracy": accuracy, "test_accuracy_without": tta}
        write(f"{grid}/cnn-dense-h64.json", record)
        write(f"{grid}/grid-ensemble.json", {"kind": "ensemble", "test_accuracy": accuracy + 0.01})

    assert "Not recorded yet" in blocks.competition_grid_dropless(Records(tmp_path))
    run("grid-einsum", 40.0, 0.90)
    run("grid", 80.0, 0.915, tta=0.912)
    text = blocks.competition_grid_dropless(Records(tmp_path))
    assert "| dense h64 | 40 | 11.0 (10.0-12.0) | 0 of 2 | 80 | 11.0 (10.0-12.0) | 0 of 2 | 2.00 | 90.00 / 91.50 |" in text
    assert "score 91.00 / 92.50% held-out" in text
    # 91.5% with TTA, 91.2% without.
    assert "dense h64 +0.30." in text
