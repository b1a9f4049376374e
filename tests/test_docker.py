"""docker/: the compose file's structure and the Dockerfile's stages (no Docker engine here).

Every service's command is parsed by the real CLI parser, and its configuration (the mounted
pipeline.toml plus the service's environment) is loaded and turned into the role's config.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from pipeline.cli import build_parser
from pipeline.config import load, schema

yaml = pytest.importorskip("yaml")

DOCKER = Path(__file__).resolve().parents[1] / "docker"
GiB = 1 << 30


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def shm_bytes(size: str) -> int:
    m = re.fullmatch(r"(\d+)([kmg]?)b?", str(size).lower())
    assert m, f"unreadable shm_size {size!r}"
    return int(m.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": GiB}[m.group(2)]


def test_services_and_volumes(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"broker", "sink", "worker"}
    worker = services["worker"]
    assert "container_name" not in worker and "ports" not in worker, "--scale needs both gone"
    assert "journal" in compose["volumes"]
    journal_mounts = [v for v in services["sink"]["volumes"] if v.startswith("journal:")]
    assert journal_mounts == ["journal:/var/lib/pipeline"]


def test_shared_memory_for_the_heavy_zone(compose: dict[str, Any]) -> None:
    sink, worker = compose["services"]["sink"], compose["services"]["worker"]
    assert shm_bytes(sink["shm_size"]) >= GiB
    assert sink["ipc"] == "shareable" and worker["ipc"] == "service:sink"


@pytest.mark.parametrize("role", ["broker", "sink", "worker"])
def test_commands_are_real_cli_commands(compose: dict[str, Any], role: str) -> None:
    service = compose["services"][role]
    args = build_parser().parse_args(service["command"])
    assert args.command == role
    assert getattr(args, f"metrics.{role}_port") > 0


@pytest.mark.parametrize("role", ["broker", "sink", "worker"])
def test_each_service_configuration_loads(compose: dict[str, Any], role: str) -> None:
    service = compose["services"][role]
    env = {k: str(v) for k, v in (service.get("environment") or {}).items()}
    known = {s.env for s in schema().values()}
    assert set(env) <= known, f"unknown variables: {set(env) - known}"
    mounts = [v.split(":") for v in service["volumes"]]
    assert ["./pipeline.toml", "/etc/pipeline/pipeline.toml", "ro"] in mounts
    settings = load(DOCKER / "pipeline.toml", env=env)
    config = getattr(settings, role)()
    if role == "broker":
        assert config.frontend == "tcp://*:5555"
    elif role == "sink":
        assert config.endpoints.sync == "tcp://*:5560"
        assert config.endpoints.control == "tcp://broker:5557"
        assert config.journal_dir.startswith("/var/lib/pipeline/")
    else:
        assert config.endpoints.backend == "tcp://broker:5556"
        assert config.endpoints.updates == "tcp://sink:5558"


def test_dockerfile_builds_a_wheel_then_a_slim_runtime() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)\s+AS\s+(\w+)", text, re.M)
    assert [name for _, name in stages] == ["builder", "runtime"]
    assert "slim" in stages[1][0]
    assert "maturin build --release" in text
    assert "COPY --from=builder /wheels" in text and "pip install" in text
    assert re.search(r'^ENTRYPOINT \["pipeline"\]', text, re.M)
    for path in ("pyproject.toml", "engine-rs", "pipeline", "brokers"):
        assert (DOCKER.parent / path).exists(), f"the Dockerfile copies {path}"
