"""The hand-run benchmark scripts stay importable (their imports follow the package) and document their use."""

from __future__ import annotations

import importlib.util

import pytest

from tests.conftest import REPO_ROOT

SCRIPTS = sorted((REPO_ROOT / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.stem)
def test_benchmark_script_imports_without_running(script):
    spec = importlib.util.spec_from_file_location(f"benchmark_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # definitions only: every script runs from a main() guard
    assert callable(module.main)
    assert f"python benchmarks/{script.name}" in module.__doc__  # the command line it is run with
