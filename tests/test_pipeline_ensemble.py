"""pipelines.ensemble: averaging, out-of-bag scores, test-time augmentation,
pseudo-labels and the saved probabilities, with expected values written by
hand; the `ensemble` command rebuilds an ensemble from saved files alone."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from pipelines import cli
from pipelines import data
from pipelines import ensemble


def _ten(rows):
    """Hand-written probabilities over the first classes, zero for the rest."""
    rows = np.asarray(rows, dtype=np.float64)
    return np.pad(rows, ((0, 0), (0, 10 - rows.shape[1])))


# Member a says 0, 1, 2; member b says 1, 0 (a 0.4/0.4 tie goes to the lower
# class), 1. Their mean (0.35 0.5 0.15 / 0.3 0.45 0.25 / 0.1 0.35 0.55) says
# 1, 1, 2: the ensemble agrees with neither member on every row.
MEMBER_A = _ten([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8]])
MEMBER_B = _ten([[0.1, 0.7, 0.2], [0.4, 0.4, 0.2], [0.1, 0.6, 0.3]])
ENSEMBLE_LABELS = [1, 1, 2]


def test_mean_of_two_members_by_hand():
    mean = ensemble.average_probabilities([MEMBER_A, MEMBER_B])
    np.testing.assert_allclose(mean[:, :3], [[0.35, 0.5, 0.15], [0.3, 0.45, 0.25], [0.1, 0.35, 0.55]])
    assert ensemble.labels_of(MEMBER_A).tolist() == [0, 1, 2]
    assert ensemble.labels_of(MEMBER_B).tolist() == [1, 0, 1]
    assert ensemble.labels_of(mean).tolist() == ENSEMBLE_LABELS
    assert ensemble.labels_of(mean).dtype == np.int32
    assert ensemble.accuracy(mean, [1, 0, 2]) == pytest.approx(2 / 3)


def test_members_must_agree_in_shape():
    with pytest.raises(ValueError, match="at least one member"):
        ensemble.average_probabilities([])
    with pytest.raises(ValueError, match="same shape"):
        ensemble.average_probabilities([MEMBER_A, MEMBER_B[:2]])


def test_out_of_bag_averages_each_row_over_the_members_that_held_it_out():
    # Row 0 is held out by both members, row 3 by the first, row 5 by the second.
    first = ([3, 0], _ten([[0.2, 0.8], [0.9, 0.1]]), [1, 1])
    second = ([0, 5], _ten([[0.1, 0.9], [0.7, 0.3]]), [1, 0])
    index, probabilities, labels = ensemble.out_of_bag([first, second])
    assert index.tolist() == [0, 3, 5]
    np.testing.assert_allclose(probabilities[:, :2], [[0.5, 0.5], [0.2, 0.8], [0.7, 0.3]])
    assert labels.tolist() == [1, 1, 0]
    # Row 0 ties (0.5/0.5 -> class 0, wrong); rows 3 and 5 are right.
    assert ensemble.accuracy(probabilities, labels) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="row 0"):
        ensemble.out_of_bag([first, ([0], _ten([[1.0, 0.0]]), [7])])


# Test-time augmentation --------------------------------------------------------


def test_shift_images_moves_pixels_and_fills_zeros():
    image = np.arange(1, 13, dtype=np.float32).reshape(1, 3, 4, 1)
    # 1  2  3  4
    # 5  6  7  8
    # 9 10 11 12
    down_right = ensemble.shift_images(image, 1, 1)[0, :, :, 0]
    np.testing.assert_array_equal(down_right, [[0, 0, 0, 0], [0, 1, 2, 3], [0, 5, 6, 7]])
    up_left = ensemble.shift_images(image, -1, -2)[0, :, :, 0]
    np.testing.assert_array_equal(up_left, [[7, 8, 0, 0], [11, 12, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(ensemble.shift_images(image, 0, 0), image)
    assert not ensemble.shift_images(image, 3, 0).any()
    assert image[0, 0, 0, 0] == 1  # the input is not changed


def _brightest_column(images):
    """A stand-in model: one-hot at the column of the brightest pixel
    (column 0 for a blank image)."""
    flat = images.reshape(len(images), -1)
    columns = flat.argmax(axis=1) % images.shape[2]
    return np.eye(10)[columns]


def test_tta_averages_the_image_and_its_one_pixel_shifts():
    images = np.zeros((2, 28, 28, 1), dtype=np.float32)
    images[0, 5, 3] = 1  # views: column 3 (itself, down, up), 4 (right), 2 (left)
    images[1, 10, 0] = 1  # column 0 three times, 1 (right); left pushes it out: blank, 0
    plain = ensemble.predict_probabilities(_brightest_column, images)
    np.testing.assert_array_equal(plain, np.eye(10)[[3, 0]])
    tta = ensemble.predict_probabilities(_brightest_column, images, tta=True)
    expected = np.zeros((2, 10))
    expected[0, [3, 4, 2]] = [0.6, 0.2, 0.2]
    expected[1, [0, 1]] = [0.8, 0.2]
    np.testing.assert_allclose(tta, expected)
    views = ensemble.predict_views(_brightest_column, images)
    assert views.shape == (5, 2, 10)
    np.testing.assert_array_equal(views[0], plain)  # the unshifted view comes first


# Pseudo-labels -----------------------------------------------------------------


def test_pseudo_labels_take_the_confident_rows_only():
    probabilities = _ten([[0.995, 0.005], [0.02, 0.98], [0.001, 0.999], [0.0, 0.99]])
    index, labels = ensemble.pseudo_labels(probabilities, 0.99)
    assert index.tolist() == [0, 2, 3] and labels.tolist() == [0, 1, 1]
    index, labels = ensemble.pseudo_labels(probabilities, 0.9999)
    assert index.tolist() == [] and labels.tolist() == []
    for bad in (0, 1.01, -0.5):
        with pytest.raises(ValueError, match="threshold"):
            ensemble.pseudo_labels(probabilities, bad)


# Saved probabilities and rebuilt ensembles ------------------------------------


def test_probabilities_are_saved_as_compressed_float16(tmp_path):
    path = ensemble.probabilities_path(tmp_path / "run.json")
    assert path == tmp_path / "run.probs.npz"
    ensemble.save_probabilities(path, MEMBER_A, MEMBER_B[:2], [7, 2], [1, 0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.probs.npz"]  # no temp file left
    with np.load(path) as raw:
        assert raw["test"].dtype == raw["validation"].dtype == np.float16
        assert raw["validation_index"].dtype == np.int64 and raw["validation_labels"].dtype == np.int8
    loaded = ensemble.load_probabilities(path)
    assert loaded["test"].dtype == np.float32
    np.testing.assert_allclose(loaded["test"], MEMBER_A, atol=1e-3)
    np.testing.assert_allclose(loaded["validation"], MEMBER_B[:2], atol=1e-3)
    assert loaded["validation_index"].tolist() == [7, 2] and loaded["validation_labels"].tolist() == [1, 0]
    np.savez_compressed(tmp_path / "other.npz", test=MEMBER_A)
    with pytest.raises(ValueError, match="missing"):
        ensemble.load_probabilities(tmp_path / "other.npz")


def _member(directory, name, test, validation_index, validation, validation_labels, labels_csv):
    """A finished run as train_run leaves it: record and probabilities."""
    record = directory / f"{name}.json"
    record.write_text(json.dumps({
        "status": "complete", "name": name, "seed": len(name), "record": str(record),
        "validation_accuracy": 0.5, "test_accuracy": 0.25, "params_total": 100,
        "params_active": 60, "wall_time_s": 1.5,
        "data": {"origin": "local", "train_csv": "train.csv", "test_csv": "test.csv",
                 "test_labels_csv": str(labels_csv), "test_rows": len(test)},
    }))
    ensemble.save_probabilities(ensemble.probabilities_path(record), test, validation,
                                validation_index, validation_labels)
    return record


@pytest.fixture
def two_members(tmp_path):
    labels_csv = data.write_submission(tmp_path / "test_labels.csv", [1, 0, 2])
    a = _member(tmp_path, "a", MEMBER_A, [4, 1], _ten([[0.9, 0.1], [0.3, 0.7]]), [0, 1], labels_csv)
    b = _member(tmp_path, "b", MEMBER_B, [1, 6], _ten([[0.6, 0.4], [0.2, 0.8]]), [1, 0], labels_csv)
    return a, b


def test_ensemble_command_rebuilds_from_saved_probabilities(two_members, tmp_path, capsys):
    out = tmp_path / "ens" / "mean.csv"
    assert cli.main(["ensemble", *map(str, two_members), "--out", str(out)]) == 0
    submission = pd.read_csv(out)
    assert submission["ImageId"].tolist() == [1, 2, 3]
    assert submission["Label"].tolist() == ENSEMBLE_LABELS
    record = json.loads((tmp_path / "ens" / "mean.json").read_text())
    assert record["kind"] == "ensemble" and record["status"] == "complete"
    assert record["members"] == [str(p) for p in two_members]
    assert record["member_names"] == ["a", "b"]
    # Labels 1, 0, 2 against 1, 1, 2.
    assert record["test_accuracy"] == pytest.approx(2 / 3)
    # Out of bag: row 1 (0.45 0.55 -> 1, right), row 4 (0.9 -> 0, right), row 6 (0.8 -> 1, wrong).
    assert record["validation_rows"] == 3 and record["validation_accuracy"] == pytest.approx(2 / 3)
    assert (record["params_total"], record["params_active"], record["members_wall_time_s"]) == (200, 120, 3.0)
    saved = ensemble.load_probabilities(tmp_path / "ens" / "mean.probs.npz")
    np.testing.assert_allclose(saved["test"][:, :3], [[0.35, 0.5, 0.15], [0.3, 0.45, 0.25], [0.1, 0.35, 0.55]],
                               atol=2e-3)
    assert saved["validation_index"].tolist() == [1, 4, 6]
    assert "out-of-bag validation 0.6667" in capsys.readouterr().out


def test_ensemble_command_without_probabilities_exits_2_and_writes_nothing(two_members, tmp_path, capsys):
    ensemble.probabilities_path(two_members[1]).unlink()
    out = tmp_path / "ens" / "mean.csv"
    assert cli.main(["ensemble", *map(str, two_members), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "b.probs.npz" in err and "Retrain" in err
    assert not (tmp_path / "ens").exists()


def test_ensemble_command_refuses_members_of_different_test_sets(two_members, tmp_path, capsys):
    record = json.loads(two_members[1].read_text())
    record["data"]["test_rows"] = 4
    two_members[1].write_text(json.dumps(record))
    assert cli.main(["ensemble", *map(str, two_members), "--out", str(tmp_path / "x.csv")]) == 2
    assert "different test sets" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()


def test_ensemble_command_names_the_train_csvs_of_members_trained_on_different_data(
        two_members, tmp_path, capsys):
    # b holds out training row 1 too, with another label: another train.csv.
    record = json.loads(two_members[1].read_text())
    record["data"]["train_csv"] = "other/train.csv"
    two_members[1].write_text(json.dumps(record))
    ensemble.save_probabilities(ensemble.probabilities_path(two_members[1]), MEMBER_B,
                                _ten([[0.6, 0.4], [0.2, 0.8]]), [1, 6], [0, 0])
    assert cli.main(["ensemble", *map(str, two_members), "--out", str(tmp_path / "x.csv")]) == 2
    err = capsys.readouterr().err
    assert "training row 1" in err and "other/train.csv" in err and "different train.csv" in err
    assert not (tmp_path / "x.csv").exists()


def test_ensemble_command_refuses_to_overwrite_a_member(two_members, tmp_path, capsys):
    # `--out a.csv` would have replaced member a's record and probabilities.
    record_bytes = two_members[0].read_bytes()
    probabilities = ensemble.probabilities_path(two_members[0]).read_bytes()
    assert cli.main(["ensemble", *map(str, two_members), "--out", str(tmp_path / "a.csv")]) == 2
    assert "overwrite one of its members" in capsys.readouterr().err
    assert two_members[0].read_bytes() == record_bytes
    assert ensemble.probabilities_path(two_members[0]).read_bytes() == probabilities
    assert not (tmp_path / "a.csv").exists()


def test_ensemble_command_starts_without_keras(two_members, tmp_path):
    out = tmp_path / "mean.csv"
    code = ("import sys; from pipelines import cli; "
            f"code = cli.main(['ensemble', {str(two_members[0])!r}, {str(two_members[1])!r}, '--out', {str(out)!r}]); "
            "print(code, 'keras' in sys.modules, 'tensorflow' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split()[-3:] == ["0", "False", "False"]
    assert pd.read_csv(out)["Label"].tolist() == ENSEMBLE_LABELS


def test_a_rebuilt_ensemble_keeps_its_kaggle_score_while_its_file_is_unchanged(two_members, tmp_path):
    out = tmp_path / "mean.csv"
    ensemble.build_ensemble(two_members, out, log=lambda line: None)
    record = json.loads(out.with_suffix(".json").read_text())
    record["kaggle"] = {"ref": 5, "status": "COMPLETE", "public_score": 0.9}
    out.with_suffix(".json").write_text(json.dumps(record))
    assert ensemble.build_ensemble(two_members, out, log=lambda line: None)["kaggle"]["ref"] == 5
    # Member a alone predicts other labels: the old score no longer applies.
    assert "kaggle" not in ensemble.build_ensemble(two_members[:1], out, log=lambda line: None)


def test_ensemble_submit_uploads_once_and_keeps_the_score(two_members, tmp_path, kaggle_server, capsys):
    out = tmp_path / "mean.csv"
    argv = ["ensemble", *map(str, two_members), "--out", str(out), "--submit"]
    assert cli.main(argv) == 0
    assert kaggle_server.uploaded == [out.read_bytes()]
    kept = json.loads(out.with_suffix(".json").read_text())["kaggle"]
    assert kept["public_score"] == pytest.approx(0.98765) and kept["message"] == "mean of a, b"
    assert "Kaggle public score" in capsys.readouterr().out
    # Rebuilt with the same members: the same file, already scored, is not uploaded again.
    assert cli.main(argv) == 0
    assert len(kaggle_server.uploaded) == 1
    assert json.loads(out.with_suffix(".json").read_text())["kaggle"]["public_score"] == pytest.approx(0.98765)
