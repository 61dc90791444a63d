"""Packaging: the core package needs Keras and NumPy only; every library the
pipeline imports is declared in the `pipeline` extra, and `test` covers the
suite. (CI's .ci/core_install_check.py proves the core install in a venv.)"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

# Import name -> distribution, where they differ or one distribution brings
# the other (kaggle's client installs kagglesdk, requests and urllib3).
DISTRIBUTION = {
    "sklearn": "scikit-learn",
    "kagglesdk": "kaggle",
    "requests": "kaggle",
    "urllib3": "kaggle",
}


def _names(requirements: list[str]) -> set[str]:
    """Distribution names of requirement strings, lower-case, no extras or pins."""
    return {re.match(r"[A-Za-z0-9_.-]+", r).group(0).lower() for r in requirements}


def _third_party_imports(package: str, top_level_only: bool) -> dict[str, str]:
    """Top-level module name -> first file importing it, for a package's
    absolute imports that are neither the standard library nor the project."""
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        nodes = tree.body if top_level_only else ast.walk(tree)
        for node in nodes:
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                name = module.split(".")[0]
                if name in sys.stdlib_module_names or name in ("moe_keras", "pipelines", "__future__"):
                    continue
                found.setdefault(name, str(path.relative_to(ROOT)))
    return found


def test_core_depends_on_keras_and_numpy_only():
    assert _names(PROJECT["dependencies"]) == {"keras", "numpy"}


def test_moe_keras_imports_only_its_dependencies_at_import_time():
    # Imports inside functions may be backend-specific (tensorflow under the
    # TensorFlow backend); only module level runs on `import moe_keras`.
    imports = _third_party_imports("moe_keras", top_level_only=True)
    assert set(imports) <= {"keras", "numpy"}, imports


def test_pipeline_extra_declares_everything_the_pipeline_imports():
    extras = PROJECT["optional-dependencies"]
    declared = _names(PROJECT["dependencies"]) | _names(extras["pipeline"])
    imports = _third_party_imports("pipelines", top_level_only=False)
    # Other Keras backends are the user's choice (the `jax` extra, or torch);
    # the pipeline imports them only when Keras already runs on them.
    undeclared = {name: where for name, where in imports.items()
                  if DISTRIBUTION.get(name, name).lower() not in declared and name not in ("jax", "torch")}
    assert not undeclared, undeclared
    assert "kaggle>=2.2.5" in extras["pipeline"]
    assert {"scipy", "tensorflow"} <= _names(extras["pipeline"])


def test_test_extra_covers_the_suite_and_other_extras_stay():
    extras = PROJECT["optional-dependencies"]
    assert "moe-keras[pipeline]" in extras["test"]
    assert {"pytest", "jax[cpu]"} <= {re.match(r"[A-Za-z0-9_.\[\]-]+", r).group(0) for r in extras["test"]}
    assert extras["gpu"] == ["tensorflow[and-cuda]>=2.16"]
    assert _names(extras["jax"]) == {"jax"}


def test_submodules_named_in_the_readme_are_attributes_of_the_package():
    """README's snippets write `moe_keras.distribution.expert_parallel(...)`
    after `import moe_keras`."""
    import moe_keras

    for name in ("callbacks", "distribution", "losses", "routing", "usage", "upcycle"):
        assert hasattr(moe_keras, name), name
    assert callable(moe_keras.distribution.expert_parallel)
