"""The typed surface: the hand-written stub of the Rust extension agrees with the built
extension (`mypy.stubtest`), the public modules type-check strictly, and both packages
type-check under the project's own settings.

All run mypy in a subprocess (a fresh interpreter that imports the extension as built).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parent.parent
PUBLIC = ["pipeline/__init__.py", "pipeline/api.py", "pipeline/aio.py", "pipeline/errors.py",
          "pipeline/producer.py", "pipeline/protocol.py", "pipeline/subscriber.py"]


def _mypy(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MYPY_CACHE_DIR": str(tmp_path / "mypy-cache")}
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=280)


def test_engine_stub_matches_extension(tmp_path: Path) -> None:
    # No allowlist: every name, signature and class flag of pipeline/_engine.pyi must match.
    out = _mypy(tmp_path, "mypy.stubtest", "pipeline._engine")
    assert out.returncode == 0, out.stdout + out.stderr


def test_public_modules_type_check_strictly(tmp_path: Path) -> None:
    out = _mypy(tmp_path, "mypy", "--strict", *PUBLIC)
    assert out.returncode == 0, out.stdout + out.stderr


def test_packages_type_check(tmp_path: Path) -> None:
    # Everything that ships, under [tool.mypy] in pyproject.toml (not --strict)
    out = _mypy(tmp_path, "mypy", "pipeline", "brokers")
    assert out.returncode == 0, out.stdout + out.stderr


def test_package_is_marked_typed() -> None:
    assert (ROOT / "pipeline" / "py.typed").is_file()
    assert (ROOT / "pipeline" / "_engine.pyi").is_file()
