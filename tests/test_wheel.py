"""The built wheel holds what users need: the extension, its stub and the typed marker, both
packages, and the `pipeline` console script.

Building is slow (a release build of the Rust crate, about a minute in its own target
directory, so it never races a developer's build): the test is marked `slow`. Set
PIPELINE_WHEEL to a wheel built already to inspect that one instead.
"""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parent.parent
MATURIN = Path(sys.executable).with_name("maturin")
REQUIRED = ["pipeline/_engine.abi3.so", "pipeline/_engine.pyi", "pipeline/py.typed",
            "pipeline/__init__.py", "pipeline/aio.py", "pipeline/cli.py",
            "brokers/__init__.py", "brokers/broker.py"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("PIPELINE_WHEEL")
    if given:
        return Path(given)
    if not MATURIN.exists():
        pytest.skip("maturin is not installed next to this interpreter")
    out = tmp_path_factory.mktemp("wheel")
    env = {**os.environ, "CARGO_TARGET_DIR": str(out / "target")}
    run = subprocess.run([str(MATURIN), "build", "--release", "-o", str(out / "dist")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=850)
    assert run.returncode == 0, run.stderr[-4000:]
    (built,) = (out / "dist").glob("pipeline-*.whl")
    return built


def test_wheel_contents(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        info = {n.split("/", 1)[1]: n for n in names if ".dist-info/" in n}
        entry_points = z.read(info["entry_points.txt"]).decode()
        metadata = z.read(info["METADATA"]).decode()
        so = z.read("pipeline/_engine.abi3.so")
    missing = [n for n in REQUIRED if n not in names]
    assert not missing, f"not in {wheel.name}: {missing}"
    assert so[:4] == b"\x7fELF"
    scripts = configparser.ConfigParser()
    scripts.read_string(entry_points)
    assert scripts["console_scripts"]["pipeline"].strip() == "pipeline.cli:main"
    assert "Requires-Dist: pyzmq" in metadata
    assert "abi3" in wheel.name
    stray = [n for n in names if n.startswith(("tests/", "engine-rs/", "docs/"))
             or "__pycache__" in n or n.endswith(".pyc")]
    assert not stray, stray
