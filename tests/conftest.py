"""Shared pytest fixtures."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import pathlib

import numpy as np
import pytest


ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_script(relative_path):
    """A script that is not in a package (`benchmarks/*.py`) imported as a
    module, so tests can call its functions."""
    path = ROOT / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def gradients(fn, *arrays):
    """Gradients of the scalar `fn(*tensors)` w.r.t. each of `arrays`.

    Taken with the active Keras backend's own autodiff (`jax.grad`,
    `tf.GradientTape`, `torch.autograd.grad`), the pattern of
    `test_dispatch.sparse_gradients`. An input `fn` does not depend on gets
    a zero gradient on every backend (TensorFlow and torch would say None).
    Skips the test on a backend without a branch here.

    Returns:
        A list of float32 NumPy arrays, one per array, of the arrays' shapes.
    """
    import keras

    arrays = [np.asarray(a, dtype="float32") for a in arrays]
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        grads = jax.grad(fn, argnums=tuple(range(len(arrays))))(*arrays)
    elif backend == "tensorflow":
        import tensorflow as tf

        variables = [tf.constant(a) for a in arrays]
        with tf.GradientTape() as tape:
            tape.watch(variables)
            value = fn(*variables)
        grads = tape.gradient(value, variables, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    elif backend == "torch":
        import torch

        variables = [keras.ops.convert_to_tensor(a).detach().requires_grad_(True) for a in arrays]
        grads = torch.autograd.grad(fn(*variables), variables, allow_unused=True)
        grads = [torch.zeros_like(v) if g is None else g for v, g in zip(variables, grads)]
    else:
        pytest.skip(f"tests/conftest.py's gradients() has no branch for the {backend} backend")
    return [np.asarray(keras.ops.convert_to_numpy(g), dtype="float32") for g in grads]


@pytest.fixture
def kaggle_server(monkeypatch, tmp_path):
    """A fake Kaggle API on 127.0.0.1 that the *real* ``kaggle`` client talks to.

    Sets (via monkeypatch, so undone after the test) the environment the
    official client reads: legacy API-key credentials matching the fake
    server, a private ``HOME`` and ``KAGGLE_CONFIG_DIR`` (so no real
    ``~/.kaggle`` token is picked up or written), ``KAGGLE_API_ENVIRONMENT=LOCALHOST``
    (endpoint ``http://localhost``) and ``HTTP(S)_PROXY`` pointing at the fake
    server, which then receives every request, also from a ``kaggle`` CLI
    subprocess inheriting ``os.environ``.

    Yields:
        The started ``kaggle_fake_server.FakeKaggleServer``.
    """
    try:
        from tests.kaggle_fake_server import FakeKaggleServer
    except ImportError:  # tests/ is not a package: pytest put it on sys.path
        from kaggle_fake_server import FakeKaggleServer

    home = tmp_path / "kaggle-home"
    config_dir = tmp_path / "kaggle-config"
    home.mkdir()
    config_dir.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(config_dir))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    for name in ("KAGGLE_API_TOKEN", "KAGGLE_KERNEL_RUN_TYPE", "KAGGLE_DATA_PROXY_URL", "KAGGLE_API_V1_TOKEN",
                 "KAGGLE_COMPETITION_SUBMISSION_MODEL_VERSION_ID", "KAGGLE_API_ENVIRONMENT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KAGGLE_USERNAME", "fake-user")
    monkeypatch.setenv("KAGGLE_KEY", "fake-key")

    # KaggleApi snapshots KAGGLE_CONFIG_DIR and KAGGLE_API_ENVIRONMENT into
    # class attributes when kaggle is first imported; import it now (with
    # test credentials and config dir, before LOCALHOST is set, so the
    # snapshot is the production one) and patch those attributes per test.
    # Importing kaggle authenticates and may print; keep the output quiet.
    with contextlib.redirect_stdout(io.StringIO()):
        from kaggle.api.kaggle_api_extended import KaggleApi
    args = [a for a in KaggleApi.args if a not in ("--local", "--staging", "--admin")] + ["--local"]
    monkeypatch.setattr(KaggleApi, "args", args)
    monkeypatch.setattr(KaggleApi, "config_dir", str(config_dir))
    monkeypatch.setattr(KaggleApi, "config", str(config_dir / "kaggle.json"))

    server = FakeKaggleServer().start()
    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "LOCALHOST")
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    # HTTPS too: anything that tried the production endpoint would be refused
    # by the fake (CONNECT -> 405) instead of leaving the machine.
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.setenv(name, server.url)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def accelerator_path(monkeypatch):
    """The JAX accelerator path (`ragged_dot` in `grouped_matmul`, the
    sorted-rows engine in `dropless_engine`) forced on the CPU, where it is
    slow but exact, so that CI checks the code a GPU or TPU runs."""
    import keras

    if keras.backend.backend() != "jax":
        pytest.skip("ragged_dot is JAX's")
    import jax

    from moe_keras import dispatch
    from moe_keras.dispatch import grouped

    monkeypatch.setattr(grouped, "ACCELERATORS", (*grouped.ACCELERATORS, jax.default_backend()))
    assert dispatch.dropless_engine(24) == "grouped"


@pytest.fixture
def torch_grouped_path(monkeypatch):
    """PyTorch's CUDA path (the sorted-rows engine through `torch._grouped_mm`)
    forced on the CPU, where recent torch runs the kernel too, so that the
    code a CUDA device runs is checked here. Yields a list that collects
    the `(rows, kernels)` shapes each kernel call was given."""
    import keras

    if keras.backend.backend() != "torch":
        pytest.skip("torch._grouped_mm is PyTorch's")
    from moe_keras import dispatch
    from moe_keras.dispatch import grouped
    from moe_keras.dispatch import strategy

    if not grouped.torch_grouped_mm_available():
        pytest.skip("this torch has no torch._grouped_mm that runs on the CPU")
    monkeypatch.setattr(strategy, "TORCH_GROUPED_DEVICES", (grouped.torch_device_type(),))
    assert dispatch.dropless_engine(24) == "grouped"
    calls = []
    kernel = grouped.torch_grouped_matmul

    def counted(rows, kernels, group_sizes):
        calls.append((tuple(rows.shape), tuple(kernels.shape)))
        return kernel(rows, kernels, group_sizes)

    monkeypatch.setattr(grouped, "torch_grouped_matmul", counted)
    yield calls
