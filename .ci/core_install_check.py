"""Core-install check: `pip install . jax` alone must train a MoE layer.

Run by .ci/run in a venv holding only the core package and JAX, with
KERAS_BACKEND=jax. Fails if TensorFlow is importable (the core's
dependencies pulled it in) or if importing any moe_keras module drags in
one of the pipeline's libraries.
"""

import importlib
import importlib.util
import os
import pkgutil
import sys

import numpy as np

# scipy is missing from this list because jax itself depends on it.
PIPELINE_ONLY = ("tensorflow", "pandas", "sklearn", "matplotlib", "kaggle", "mlxtend")


def main():
    assert os.environ.get("KERAS_BACKEND") == "jax", "run with KERAS_BACKEND=jax"
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        pass
    else:
        raise AssertionError("tensorflow is importable: the core install must not pull it in")
    installed = [name for name in PIPELINE_ONLY if importlib.util.find_spec(name) is not None]
    assert not installed, f"pipeline-only libraries installed by the core package: {installed}"

    import keras

    import moe_keras
    from moe_keras import MoEDense

    for module in pkgutil.walk_packages(moe_keras.__path__, "moe_keras."):
        importlib.import_module(module.name)
    assert keras.backend.backend() == "jax", keras.backend.backend()

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), MoEDense(4, num_experts=4, top_k=2)])
    model.compile("adam", "mse")
    rng = np.random.default_rng(0)
    x = rng.random((64, 8), dtype=np.float32)
    y = rng.random((64, 4), dtype=np.float32)
    before = [w.copy() for w in model.get_weights()]
    history = model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    loss = history.history["loss"][0]
    assert np.isfinite(loss), loss
    # A step that changes no weight would also "train" without error.
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights())), "no weight changed"
    print(f"core install OK: keras {keras.__version__} on jax, MoEDense trained 1 epoch, loss {loss:.4f}, "
          f"python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
