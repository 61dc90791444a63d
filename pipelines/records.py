"""Run records and the one way files are written.

Every run (a training run, a benchmark pass, an experiment) writes a small
JSON record: its command, config, seed, library versions, machine, metrics
and timings, never weights. Every file the project writes goes through
`write_bytes_atomically`: a temp file beside the target, then a rename, so a
failed or interrupted run never leaves half a file where a good one was.
"""

import json
import os
import platform
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np


def write_bytes_atomically(path, payload):
    """Writes `payload` (bytes) to a temp file beside `path`, then renames it
    into place; the old file, if any, stays whole until the rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(payload)
            file.flush()
            os.fsync(file.fileno())
        # mkstemp makes owner-only files; these are ordinary shared outputs.
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise


def write_text_atomically(path, text):
    """`write_bytes_atomically` for UTF-8 text (newlines kept as given)."""
    write_bytes_atomically(path, text.encode("utf-8"))


def _json_default(value):
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def to_json(payload):
    """Indented, key-sorted JSON text with a final newline (stable diffs)."""
    return json.dumps(payload, indent=2, sort_keys=True, default=_json_default) + "\n"


def write_json_atomically(path, payload):
    """Writes `payload` as indented JSON, atomically."""
    write_text_atomically(path, to_json(payload))


def save_figure_atomically(figure, path, **savefig_kwargs):
    """`figure.savefig` into memory, then one atomic write of the bytes."""
    import io

    buffer = io.BytesIO()
    fmt = Path(path).suffix.lstrip(".") or "png"
    figure.savefig(buffer, format=fmt, **savefig_kwargs)
    write_bytes_atomically(path, buffer.getvalue())


def markdown_table(header, rows):
    """A GitHub Markdown table: a header row, a rule, one line per row."""
    lines = ["| " + " | ".join(str(cell) for cell in header) + " |",
             "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def library_versions():
    """Versions of Python, Keras (and its backend) and the numeric libraries
    that are installed; imports none that is not already imported or cheap."""
    import keras

    versions = {"python": platform.python_version(), "keras": keras.__version__,
                "backend": keras.backend.backend(), "numpy": np.__version__}
    for name in ("tensorflow", "jax", "torch", "pandas", "sklearn", "keras_hub"):
        module = sys.modules.get(name)
        if module is None:
            try:
                module = __import__(name)
            except ImportError:
                continue
        versions[name] = getattr(module, "__version__", "unknown")
    return versions


def machine_description():
    """The machine a record was measured on: OS, CPU, cores, accelerator."""
    description = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "accelerator": None,
    }
    import keras

    if keras.backend.backend() == "jax":
        import jax

        devices = [d for d in jax.devices() if d.platform != "cpu"]
        if devices:
            description["accelerator"] = ", ".join(d.device_kind for d in devices)
    elif keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            description["accelerator"] = ", ".join(g.name for g in gpus)
    return description


def run_record(config, seed, started, **fields):
    """A run record: the command line, `config`, `seed`, library versions,
    machine, the wall time since `started` (a `time.perf_counter()` value),
    and any other `fields` (metrics, rows, ...)."""
    import time

    return {
        # Quoted as a shell would need it: study labels hold spaces.
        "command": shlex.join([os.path.basename(sys.executable), *sys.argv]),
        "config": config,
        "seed": seed,
        "versions": library_versions(),
        "machine": machine_description(),
        # Other work on the machine moves timings; the 1, 5 and 15 minute
        # load averages at the end say how busy it was.
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        **fields,
        "timings": {"total_s": round(time.perf_counter() - started, 1)},
    }


def print_record_table(path, table) -> int:
    """Prints `table(record)` of the JSON record at `path` (a benchmark's
    `--table RECORD`); returns the exit code: 2, with one line naming the
    file, when it is missing, not JSON or lacks what the table needs."""
    try:
        text = table(json.loads(Path(path).read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, IndexError, TypeError) as error:
        print(f"error: --table {path}: not a usable record ({type(error).__name__}: {error})", file=sys.stderr)
        return 2
    print(text)
    return 0


def benchmark_record(args, started, rows, backend, private=("json",)):
    """A benchmark's run record of `rows`: its parsed `args` as the config
    (less `private`, the options that say where to write or which child
    process this is), seed 0, and `backend`; written atomically to
    `args.json` when that is set.

    Returns:
        The record.
    """
    config = {key: value for key, value in vars(args).items() if key not in private}
    record = run_record(config, 0, started, backend=backend, rows=rows)
    if args.json:
        write_json_atomically(args.json, record)
    return record
