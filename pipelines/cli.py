"""Command line of `python -m pipelines.digit_recognizer`.

    python -m pipelines.digit_recognizer --moe 3,5 --hidden 64      # one run (`train` is the default)
    python -m pipelines.digit_recognizer --grid [--submit]          # the grid (+ its ensemble)
    python -m pipelines.digit_recognizer --moe 3,5 --ensemble 5     # 5 seeds, bagged, averaged
    python -m pipelines.digit_recognizer ensemble RUN_JSON... [--out F]  # average recorded runs
    python -m pipelines.digit_recognizer submit FILE [-m MSG]       # upload a file
    python -m pipelines.digit_recognizer submissions                # past scores

Exit codes: 0 success, 1 a Kaggle action failed (local files kept), 2 bad
input or arguments (nothing written), 130 interrupted (Ctrl-C; finished
files kept, nothing half-written, a grid resumes where it stopped).
"""

import argparse
import csv
import io
import json
import sys
from dataclasses import replace
from pathlib import Path

# Neither imports Keras nor the kaggle client: `submit` and `submissions`
# start without TensorFlow.
from pipelines import arguments, data, kaggle
from pipelines.records import markdown_table, write_text_atomically

PROG = "python -m pipelines.digit_recognizer"

DEFAULT_DATA_DIR = Path("data/digit-recognizer")
SUBMISSIONS_DIR = Path("submissions")
GRID_TABLE_STEM = "grid-results"
GRID_ENSEMBLE_STEM = "grid-ensemble"
DEFAULT_PSEUDO_LABEL_THRESHOLD = 0.99
DEFAULT_EMA_MOMENTUM = 0.99

# The reference write-up's models as (moe, hidden), plus the dense
# baselines: the usual one (h64) and the one with the active parameters of
# MoE(3,5) h64 (h192). Keras is imported only when training: the Kaggle-only
# subcommands start without TensorFlow.
GRID = (
    ((1, 5), 64),
    ((2, 5), 64),
    ((3, 5), 64),
    ((6, 10), 16),
    (None, 64),
    (None, 192),
)


def _pair(text):
    try:
        k, n = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected K,N (two integers, e.g. 3,5), got {text!r}"
        ) from None
    if not 1 <= k <= n:
        raise argparse.ArgumentTypeError(f"need 1 <= K <= N, got K={k}, N={n}")
    return k, n


def _pixels(text):
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number of pixels of at least 0, got {text!r}")
    return value


def _members(text):
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"expected a number of runs of at least 1, got {text!r}")
    return count


def _fraction(what, include_one):
    """An argparse type: a float in (0, 1], or in (0, 1) without
    `include_one`; `what` names it in the error."""
    interval = "(0, 1]" if include_one else "(0, 1)"

    def parse(text):
        try:
            value = float(text)
        except ValueError:
            value = None
        if value is None or not (0 < value < 1 or (include_one and value == 1)):
            raise argparse.ArgumentTypeError(f"expected {what} in {interval}, got {text!r}")
        return value

    return parse


def _positive(text):
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


_threshold = _fraction("a probability threshold", include_one=True)
_momentum = _fraction("a momentum", include_one=False)


def _add_train_arguments(parser):
    model = parser.add_argument_group("model")
    model.add_argument("--moe", type=_pair, metavar="K,N", help="MoE(K,N) feature block: top-K of N experts (omit for the dense baseline)")
    model.add_argument("--hidden", type=int, default=64, help="expert hidden size (MoE) or hidden width (baseline); default 64")
    model.add_argument("--shared", type=int, default=0, help="shared (always-active) experts")
    model.add_argument("--arch", choices=("cnn", "mlp"), default="cnn")
    model.add_argument("--conv-moe", type=_pair, metavar="K,N", help="make the second conv block an MoEConv2D MoE(K,N)")
    model.add_argument("--no-augment", action="store_true", help="no rotation/shift/zoom augmentation")
    model.add_argument("--elastic", type=_pixels, default=0.0, metavar="ALPHA", help="add an elastic distortion of scale ALPHA pixels (Simard et al. 2003 used 34) to the augmentation; default 0, off")
    model.add_argument("--trunk", choices=("strided", "pool", "deep"), default="strided",
                       help="the cnn's conv trunk: two blocks of two 3x3 convs, each halving the "
                            "resolution by a stride of 2 in its second conv (strided, default) or "
                            "by a max-pool after them (pool, the trunk before December 2026); or "
                            "deep, the best Kaggle entry's 32C3-32C3-32C5s2, 64C3-64C3-64C5s2, 128C4")
    model.add_argument("--hidden-dropout", type=float, default=0.0, help="dropout on the feature block's hidden layer: the experts' (MoE expert dropout) or the dense baseline's")
    balance = parser.add_argument_group("routing and balancing")
    balance.add_argument("--balance-loss", type=float, default=0.01, help="Switch load-balancing loss coefficient (default 0.01)")
    balance.add_argument("--importance-loss", type=float, default=0.0)
    balance.add_argument("--diversity-loss", type=float, default=0.0)
    balance.add_argument("--overflow-loss", type=float, default=0.0)
    balance.add_argument("--z-loss", type=float, default=0.0)
    balance.add_argument("--bias-rate", type=float, default=None, help="DeepSeek-V3 loss-free balancing rate (default 1e-3; 0 turns it off)")
    balance.add_argument("--capacity-factor", type=float, default=None, help="expert capacity (default: dropless)")
    balance.add_argument("--router", choices=("cosine", "linear"), default="cosine", help="router logits: cosine similarity / temperature (default; bounded, does not saturate on the wide conv features) or the plain linear x W")
    balance.add_argument("--router-temperature", type=float, default=0.1, help="temperature of the cosine router (default 0.1)")
    balance.add_argument("--router-noise", choices=("gaussian", "learned"), default=None)
    training = parser.add_argument_group("training")
    training.add_argument("--epochs", type=int, default=32, help="epochs of the cosine learning-rate schedule (default 32)")
    training.add_argument("--batch-size", type=int, default=128, help="default 128")
    training.add_argument("--lr", type=_positive, default=3e-3, help="peak learning rate of the cosine schedule (Adam; default 3e-3)")
    training.add_argument("--seed", type=arguments.seed, default=0, help="the run's seed, 0 to 2**32 - 1 (default 0); --ensemble N uses SEED..SEED+N-1")
    training.add_argument("--deterministic", action="store_true", help="deterministic ops (TensorFlow op determinism, XLA off under the default jit setting): the same --seed gives the same submission bytes on CPU")
    training.add_argument("--validation-fraction", type=float, default=0.1)
    training.add_argument("--patience", type=int, default=10, help="early-stopping patience: epochs of no lower validation loss, watched from 3/4 of --epochs on; the best watched epoch's weights are kept (default 10)")
    training.add_argument("--mixed-precision", action="store_true", help="mixed_float16 (GPU); routers stay float32")
    training.add_argument("--jit", action="store_true", help="XLA-compile the train step")
    training.add_argument("--distribute", choices=("data", "experts"), help="data parallelism (MirroredStrategy on TF, DataParallel on JAX) or expert parallelism (JAX keras.distribution)")
    training.add_argument("--quiet", action="store_true", help="no progress bars")
    training.add_argument("--pseudo-label", type=_threshold, nargs="?", const=DEFAULT_PSEUDO_LABEL_THRESHOLD, default=None, metavar="THRESHOLD", help=f"train, label the test images the model gives at least THRESHOLD (default {DEFAULT_PSEUDO_LABEL_THRESHOLD}) probability, then train a fresh model on both")
    training.add_argument("--ema", type=_momentum, nargs="?", const=DEFAULT_EMA_MOMENTUM, default=None, metavar="MOMENTUM", help=f"keep and predict with an exponential moving average of the weights (Polyak averaging; momentum default {DEFAULT_EMA_MOMENTUM}); validation and early stopping see the averaged weights")
    training.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True, help="test-time augmentation: predict the mean softmax over each image and its four one-pixel shifts (default on; --no-tta predicts the image alone)")
    io_group = parser.add_argument_group("data and outputs")
    io_group.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR, help=f"folder with train.csv/test.csv (default {DEFAULT_DATA_DIR})")
    io_group.add_argument("--out", type=Path, help="submission path (default submissions/<run-name>.csv, or <run-name>-seed<N>.csv for a --seed N other than 0); with --grid, the output folder")
    runs = io_group.add_mutually_exclusive_group()
    runs.add_argument("--grid", action="store_true", help=f"train the reference grid and average it into {GRID_ENSEMBLE_STEM}.csv (resumes: finished configs are skipped)")
    runs.add_argument("--ensemble", type=_members, metavar="N", help="train N seeds of the config, each on its own validation split (bagging), and write their averaged submission (--out; resumes like --grid)")
    upload = parser.add_argument_group("Kaggle")
    upload.add_argument("--submit", action="store_true", help="upload the submission(s) and record the public score")
    upload.add_argument("--message", help="submission message (default: run name and config)")
    upload.add_argument("--wait", type=float, default=600.0, help="seconds to wait for scoring")


def _parser():
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Train MoE(k,n) digit classifiers on Kaggle's digit-recognizer CSVs, "
        "write and upload submissions.",
        epilog=f"Without a command the arguments go to `train`: `{PROG} --moe 3,5` is "
        f"`{PROG} train --moe 3,5`.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_train_arguments(commands.add_parser(
        "train", help="train one model, or the reference grid (the default command)",
        description="Train an MoE(K,N) digit classifier (or the dense baseline, the grid, or N seeds of one config) "
        "and write its submission and run record."))
    submit = commands.add_parser("submit", help="upload a submission file and record its score")
    submit.add_argument("file", type=Path)
    submit.add_argument("-m", "--message", help="submission message (default: the file name)")
    submit.add_argument("--wait", type=float, default=600.0, help="seconds to wait for scoring")
    submit.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR, help="test.csv's folder, for the row count check")
    submit.add_argument("--record", type=Path, help="run record to store the score in (default: FILE with .json, if it exists)")
    commands.add_parser("submissions", help="list this account's recent submissions and scores")
    average = commands.add_parser(
        "ensemble", help="average recorded runs into one submission, without training",
        description="Average the saved test probabilities (<run>.probs.npz) of recorded runs "
        "into one submission, with its own record and probabilities.")
    average.add_argument("runs", type=Path, nargs="+", metavar="RUN_JSON", help="run records (each with its .probs.npz beside it)")
    average.add_argument("--out", type=Path, default=SUBMISSIONS_DIR / "ensemble.csv", help="submission path (default submissions/ensemble.csv); the record and probabilities go beside it")
    average.add_argument("--submit", action="store_true", help="upload the ensemble's submission and record the public score")
    average.add_argument("-m", "--message", help="submission message (default: the members' names)")
    average.add_argument("--wait", type=float, default=600.0, help="seconds to wait for scoring")
    return parser


COMMANDS = ("train", "submit", "submissions", "ensemble")


def _configs_from_args(args):
    from pipelines.models import ModelConfig
    from pipelines.train import TrainConfig

    routing = {
        "switch_loss_weight": args.balance_loss,
        "importance_loss_weight": args.importance_loss,
        "diversity_loss_weight": args.diversity_loss,
        "overflow_loss_weight": args.overflow_loss,
        "z_loss_weight": args.z_loss,
        "bias_update_rate": args.bias_rate,
        "router_type": args.router,
        "router_temperature": args.router_temperature,
    }
    if args.router_noise:
        routing["router_noise"] = args.router_noise
    if args.capacity_factor is not None:
        routing["capacity_factor"] = args.capacity_factor
    model_config = ModelConfig(
        arch=args.arch,
        moe=args.moe,
        hidden=args.hidden,
        shared=args.shared,
        conv_moe=args.conv_moe,
        trunk=args.trunk,
        augment=not args.no_augment,
        elastic=args.elastic,
        hidden_dropout=args.hidden_dropout,
        routing=routing,
    )
    train_config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        seed=args.seed,
        validation_fraction=args.validation_fraction,
        patience=args.patience,
        mixed_precision=args.mixed_precision,
        jit_compile=True if args.jit else "auto",
        distribute=args.distribute,
        verbose=0 if args.quiet else 1,
        deterministic=args.deterministic,
        tta=args.tta,
        pseudo_label=args.pseudo_label,
        ema=args.ema,
    )
    return model_config, train_config


def _prepare_data(directory):
    return data.prepare_data_dir(directory, download=kaggle.download_competition_data)


def _describe(model_config, train_config):
    routing = ", ".join(f"{k}={v}" for k, v in sorted(model_config.routing.items()) if v)
    return f"{model_config.name} seed={train_config.seed} epochs={train_config.epochs} {routing}".strip()


def _kaggle_failure(error, *after):
    """One line on stderr: what failed, how to retry by hand, what was kept."""
    parts = [f"error: {error}"]
    if error.retry_command:
        parts.append(f"Retry by hand: {error.retry_command}")
    print(" ".join(parts + list(after)), file=sys.stderr)


def _report_score(submission, result):
    if result.status == "COMPLETE":
        print(f"Kaggle public score for {submission}: {result.public_score}")
    elif result.status == "ERROR":
        print(f"Kaggle could not score {submission}: {result.error_description}", file=sys.stderr)
    else:
        print(f"Kaggle is still scoring {submission} ({result.note or 'pending'}); "
              f"see `{PROG} submissions`.")


def _submit_and_record(submission, record, message, wait, expected_rows):
    """Uploads one file and keeps the outcome in `record` (if it exists);
    on failure says how to retry. Returns the result, or None on failure."""
    record = Path(record) if record is not None and Path(record).exists() else None

    def keep(result):
        if record is not None:
            kaggle.record_submission(record, result)

    try:
        # The ref is recorded as soon as Kaggle has it: a Ctrl-C while
        # waiting for the score then loses nothing.
        result = kaggle.submit(submission, message, wait=wait, expected_rows=expected_rows, on_uploaded=keep)
    except kaggle.KaggleError as error:
        _kaggle_failure(error, f"The local submission {submission} is kept.")
        return None
    keep(result)
    _report_score(submission, result)
    # Scored as ERROR: the upload failed as far as the user is concerned.
    return None if result.status == "ERROR" else result


def _submit_run(args, model_config, train_config, submission, record_path, message=None):
    """Uploads a run's (or an ensemble's) submission, checked against its
    test.csv row count (kept in the record), and stores the score in the
    record. A submission an interrupted run left PENDING is waited for, not
    resubmitted. The message is `args.message`, else `message`, else the
    configs'."""
    record = _load_record(record_path)
    if record["data"].get("origin") == "embedded":
        # Kaggle scores only the 28,000 rows of its own test.csv; an upload of
        # the embedded sample's predictions is an ERROR that uses up quota.
        print(f"error: not uploading {submission}: it predicts the embedded MNIST sample's "
              f"{record['data']['test_rows']:,} test digits, not Kaggle's test.csv. Put the competition's "
              f"train.csv and test.csv (or digit-recognizer.zip) in --data, or remove the embedded sample "
              f"there so the pipeline downloads them, and train again.", file=sys.stderr)
        return None
    pending = kaggle.result_from_record(record)
    if pending is not None and pending.status == "PENDING":
        print(f"Kaggle: waiting for submission {pending.ref} of {submission}, made earlier")
        try:
            result = kaggle.await_score(pending, wait=args.wait)
        except kaggle.KaggleError as error:
            _kaggle_failure(error)
            return None
        kaggle.record_submission(record_path, result)
        _report_score(submission, result)
        return result
    message = args.message or message or _describe(model_config, train_config)
    return _submit_and_record(submission, record_path, message, args.wait, record["data"]["test_rows"])


def _run_single(args):
    from pipelines.train import train_run

    model_config, train_config = _configs_from_args(args)
    source = _prepare_data(args.data)
    # Seed 0 keeps the config's own name; another seed must not replace its
    # submission and record (named as --ensemble names its members).
    stem = model_config.name if train_config.seed == 0 else f"{model_config.name}-seed{train_config.seed}"
    submission = args.out or SUBMISSIONS_DIR / f"{stem}.csv"
    result = train_run(model_config, train_config, source, submission)
    if args.submit and _submit_run(
        args, model_config, train_config, result.submission, result.record
    ) is None:
        return 1
    return 0


def _load_record(path):
    try:
        with open(path) as file:
            return json.load(file)
    except (OSError, ValueError):
        return None


def _finished(record, model_config, train_config):
    """A run counts as done when its record says so for the same config."""
    return (
        record is not None
        and record.get("status") == "complete"
        and _same_config(record.get("model_config"), model_config)
        and _same_config(record.get("train_config"), train_config)
        and bool(record.get("submission")) and Path(record["submission"]).exists()
        # An ensemble needs the run's saved probabilities.
        and bool(record.get("probabilities")) and Path(record["probabilities"]).exists()
    )


def _same_config(recorded, config):
    """Whether a record's `recorded` config dict is `config`'s.

    A field added to the config after the record was written counts as
    its default there, so a grid recorded by an earlier version resumes
    unless the run asks for something the record's run did not do.
    """
    from dataclasses import MISSING, asdict, fields

    if not isinstance(recorded, dict):
        return False
    current = _jsonable(asdict(config))
    defaults = {f.name: _jsonable(f.default) for f in fields(config) if f.default is not MISSING}
    added = {name: value for name, value in current.items()
             if name not in recorded and name in defaults and defaults[name] == value}
    return {**added, **recorded} == current


def _jsonable(value):
    return json.loads(json.dumps(value))


def grid_table_rows(records, ensemble_record=None):
    """Rows of the grid results table, in the reference write-up's columns;
    with `ensemble_record`, a last row for the grid's ensemble (its
    validation accuracy is the averaged probabilities' on the members'
    shared validation split; it has no training accuracy or epochs)."""
    baseline = next(
        (r for r in records if r["model_config"]["moe"] is None and r["model_config"]["hidden"] == 64),
        None,
    )

    def score(record):
        return (record.get("kaggle") or {}).get("public_score")

    rows = []
    for record in records:
        config = record["model_config"]
        moe = config["moe"]
        model = f"MoE({moe[0]},{moe[1]})" if moe else "Dense baseline"
        public = score(record)
        base_public = score(baseline) if baseline else None
        local = record.get("test_accuracy")
        base_local = baseline.get("test_accuracy") if baseline else None
        rows.append({
            "Model": model,
            "Hidden Size": config["hidden"],
            "Training accuracy": round(100 * record["train_accuracy"], 2),
            "Validation accuracy": round(100 * record["validation_accuracy"], 2),
            "Public Score": "" if public is None else round(100 * public, 3),
            "Score Difference": "" if public is None or base_public is None
            else round(100 * (public - base_public), 3),
            "Held-out test accuracy": "" if local is None else round(100 * local, 2),
            "Held-out difference": "" if local is None or base_local is None
            else round(100 * (local - base_local), 2),
            "Params (total)": record["params_total"],
            "Params (active)": record["params_active"],
            "Epochs": record["epochs_run"],
            "Time (s)": record["wall_time_s"],
            "Submission": record["submission"],
        })
    if ensemble_record is not None:
        public = score(ensemble_record)
        base_public = score(baseline) if baseline else None
        local = ensemble_record.get("test_accuracy")
        base_local = baseline.get("test_accuracy") if baseline else None
        validation = ensemble_record.get("validation_accuracy")
        rows.append({
            "Model": f"Ensemble (mean of {len(ensemble_record['members'])})",
            "Hidden Size": "",
            "Training accuracy": "",
            "Validation accuracy": "" if validation is None else round(100 * validation, 2),
            "Public Score": "" if public is None else round(100 * public, 3),
            "Score Difference": "" if public is None or base_public is None
            else round(100 * (public - base_public), 3),
            "Held-out test accuracy": "" if local is None else round(100 * local, 2),
            "Held-out difference": "" if local is None or base_local is None
            else round(100 * (local - base_local), 2),
            "Params (total)": ensemble_record["params_total"],
            "Params (active)": ensemble_record["params_active"],
            "Epochs": "",
            "Time (s)": ensemble_record["members_wall_time_s"],
            "Submission": ensemble_record["submission"],
        })
    return rows


def write_grid_table(rows, stem):
    """Writes `<stem>.csv` and `<stem>.md` atomically; returns both paths."""
    fields = list(rows[0])
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    csv_path = Path(f"{stem}.csv")
    write_text_atomically(csv_path, buffer.getvalue())
    md_path = Path(f"{stem}.md")
    write_text_atomically(md_path, markdown_table(fields, [[row[f] for f in fields] for row in rows]) + "\n")
    return csv_path, md_path


def _train_or_resume(model_config, train_config, source, submission, tag):
    """Trains a run unless its record says it finished with this config;
    returns its record."""
    from pipelines.train import train_run

    record_path = submission.with_suffix(".json")
    record = _load_record(record_path)
    if _finished(record, model_config, train_config):
        print(f"[{tag}] {submission.stem}: finished earlier, not retrained ({record_path})")
        return record
    print(f"[{tag}] training {submission.stem}")
    train_run(model_config, train_config, source, submission)
    return _load_record(record_path)


def _build_and_submit_ensemble(args, record_paths, submission, default_message):
    """Averages recorded runs into `submission`; with --submit uploads it
    (unless the same file was scored before). Returns (record, ok)."""
    from pipelines import ensemble

    record = ensemble.build_ensemble(record_paths, submission)
    if args.submit and not (record.get("kaggle") or {}).get("public_score"):
        if _submit_run(args, None, None, submission, record["record"], message=default_message) is None:
            return _load_record(record["record"]), False
        record = _load_record(record["record"])
    return record, True


def _run_grid(args):
    base_model, train_config = _configs_from_args(args)
    source = _prepare_data(args.data)
    out_dir = args.out or SUBMISSIONS_DIR
    records, failures = [], 0
    for moe, hidden in GRID:
        model_config = replace(base_model, moe=moe, hidden=hidden)
        submission = Path(out_dir) / f"{model_config.name}.csv"
        record_path = submission.with_suffix(".json")
        record = _train_or_resume(model_config, train_config, source, submission, "grid")
        if args.submit and not record.get("kaggle", {}).get("public_score"):
            if _submit_run(args, model_config, train_config, submission, record_path) is None:
                failures += 1
            record = _load_record(record_path)
        records.append(record)
    ensemble_record, submitted = _build_and_submit_ensemble(
        args, [r["record"] for r in records], Path(out_dir) / f"{GRID_ENSEMBLE_STEM}.csv",
        f"grid ensemble: mean of {len(records)} models",
    )
    failures += not submitted
    csv_path, md_path = write_grid_table(
        grid_table_rows(records, ensemble_record), Path(out_dir) / GRID_TABLE_STEM
    )
    print(f"[grid] results: {csv_path} and {md_path}")
    print(md_path.read_text())
    return 1 if failures else 0


def _run_seed_ensemble(args):
    """`--ensemble N`: N seeds of one config (each its own validation split,
    as the split follows the seed), then their mean."""
    model_config, train_config = _configs_from_args(args)
    # Every member's config first, so a seed out of range fails before training.
    configs = [replace(train_config, seed=train_config.seed + i) for i in range(args.ensemble)]
    source = _prepare_data(args.data)
    out = args.out or SUBMISSIONS_DIR / f"{model_config.name}-ensemble{args.ensemble}.csv"
    paths = []
    for config in configs:
        submission = Path(out).parent / f"{model_config.name}-seed{config.seed}.csv"
        record = _train_or_resume(model_config, config, source, submission, "ensemble")
        paths.append(record["record"])
    seeds = f"seeds {configs[0].seed}..{configs[-1].seed}"
    _, submitted = _build_and_submit_ensemble(
        args, paths, Path(out), f"{_describe(model_config, train_config)}: mean of {len(configs)} {seeds}"
    )
    return 0 if submitted else 1


def _check_writable_folder(folder, what):
    """Raises ValueError unless files can be created in `folder` (made if
    missing): checked before training, not after an hour of it."""
    import tempfile

    folder = Path(folder)
    blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise ValueError(f"{what}: cannot write in {folder}: {blocker} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise ValueError(f"{what}: cannot write in {folder}: {error.strerror or error}") from None


def _run_train(args):
    for name in ("epochs", "batch_size", "hidden"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    if args.out is not None and not args.grid and args.out.is_dir():
        raise ValueError(f"--out {args.out} is a folder; give the submission's file name (e.g. {args.out / 'run.csv'})")
    if args.out is None:
        _check_writable_folder(SUBMISSIONS_DIR, "submissions")
    else:
        # --grid takes a folder, the other runs a submission file's name.
        _check_writable_folder(args.out if args.grid else args.out.parent, "--out")
    if args.grid:
        return _run_grid(args)
    return _run_seed_ensemble(args) if args.ensemble else _run_single(args)


def _run_ensemble(args):
    """`ensemble RUN_JSON...`: the mean of recorded runs, no training."""
    names = ", ".join(Path(p).stem for p in args.runs)
    _, submitted = _build_and_submit_ensemble(args, args.runs, args.out, f"mean of {names}")
    return 0 if submitted else 1


def _run_submit(args):
    test_csv = args.data / "test.csv"
    rows = len(data.read_test_csv(test_csv)) if test_csv.exists() else None
    if args.record is not None and not isinstance(_load_record(args.record), dict):
        # Checked before the upload: a score that cannot be stored would be lost.
        raise ValueError(f"--record {args.record}: not a run record (a JSON object) that exists")
    record = args.record or args.file.with_suffix(".json")
    result = _submit_and_record(args.file, record, args.message or args.file.stem, args.wait, rows)
    return 0 if result is not None else 1


def _run_submissions(args):
    print(kaggle.format_submissions_table(kaggle.list_submissions()))
    return 0


def main(argv=None):
    """Entry point; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help"):
        argv.insert(0, "train")
    try:
        args = _parser().parse_args(argv)
        return {"train": _run_train, "submit": _run_submit, "submissions": _run_submissions,
                "ensemble": _run_ensemble}[args.command](args)
    except kaggle.KaggleError as error:
        _kaggle_failure(error)
        return 1
    except (data.DataError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        # A file that could not be written (disk full, permissions): one line.
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # Every file is written whole or not at all (pipelines.records), so
        # stopping here leaves finished runs kept and the grid resumable.
        print("interrupted", file=sys.stderr)
        return 130
