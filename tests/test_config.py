"""Configuration precedence: defaults < pipeline.toml < PIPELINE_<SECTION>_<KEY> < flags."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import load, schema
from pipeline.errors import ConfigError

TOML = """
[endpoints]
run_dir = "/srv/run"
frontend = "tcp://10.0.0.1:5555"

[broker]
max_queue = 500
heartbeat_interval_ms = 250

[worker]
app = "tests.apps.counter"
credit = 16

[heavy]
namespace = "from-file"

[security]
curve = true
"""


@pytest.fixture
def toml_file(tmp_path: Path) -> Path:
    path = tmp_path / "pipeline.toml"
    path.write_text(TOML)
    return path


def test_defaults_come_from_the_dataclasses() -> None:
    s = load(env={})
    assert s.path is None
    assert set(s.sources.values()) == {"default"}
    assert s.get("worker", "credit") == 64
    assert s.get("broker", "max_queue") == 1_000_000
    assert s.get("sink", "fsync") == "interval"
    assert s.get("metrics", "broker_port") == 0


def test_file_overrides_defaults(toml_file: Path) -> None:
    s = load(toml_file, env={})
    assert (s.get("broker", "max_queue"), s.sources[("broker", "max_queue")]) == (500, "file")
    assert s.sources[("broker", "liveness")] == "default"
    assert s.broker().heartbeat_interval_ms == 250
    assert s.broker().frontend == "tcp://10.0.0.1:5555"
    assert s.get("security", "curve") is True


def test_env_overrides_file_and_flags_override_env(toml_file: Path) -> None:
    env = {"PIPELINE_WORKER_CREDIT": "32", "PIPELINE_BROKER_MAX_QUEUE": "600",
           "PIPELINE_HEAVY_NAMESPACE": "from-env", "PIPELINE_UNRELATED": "x"}
    s = load(toml_file, env=env, flags={"worker.credit": 8, "broker.liveness": None})
    assert (s.get("worker", "credit"), s.sources[("worker", "credit")]) == (8, "flag")
    assert (s.get("broker", "max_queue"), s.sources[("broker", "max_queue")]) == (600, "env")
    assert s.sources[("broker", "liveness")] == "default", "a None flag is not given"
    worker = s.worker()
    assert (worker.credit, worker.namespace, worker.app) == (8, "from-env",
                                                             "tests.apps.counter")


def test_config_file_from_environment(toml_file: Path) -> None:
    s = load(None, env={"PIPELINE_CONFIG": str(toml_file)})
    assert s.path == str(toml_file)
    assert s.get("worker", "credit") == 16


def test_env_values_are_typed() -> None:
    s = load(env={"PIPELINE_SECURITY_CURVE": "yes", "PIPELINE_SINK_STRICT": "0",
                  "PIPELINE_SINK_RECIPES": "", "PIPELINE_LOG_LEVEL": "debug"})
    assert s.get("security", "curve") is True
    assert s.get("sink", "strict") is False
    assert s.get("sink", "recipes") is None
    assert s.get("log", "level") == "debug"
    with pytest.raises(ConfigError, match="PIPELINE_WORKER_CREDIT"):
        load(env={"PIPELINE_WORKER_CREDIT": "many"})
    with pytest.raises(ConfigError, match="true or false"):
        load(env={"PIPELINE_SECURITY_CURVE": "maybe"})


def test_legacy_run_dir_variable() -> None:
    s = load(env={"PIPELINE_RUN_DIR": "/tmp/x"})
    assert (s.get("endpoints", "run_dir"), s.sources[("endpoints", "run_dir")]) == ("/tmp/x",
                                                                                    "env")


@pytest.mark.parametrize(("text", "match"), [
    ("[broker]\nmax_qeue = 1\n", "unknown setting \\[broker\\] max_qeue"),
    ("[brokr]\nmax_queue = 1\n", "unknown section"),
    ("[worker]\ncredit = \"8\"\n", "must be int"),
    ("[worker]\ncredit = true\n", "must be int"),
    ("[sink]\nstrict = 1\n", "must be bool"),
    ("broker = 3\n", "must be a \\[section\\]"),
    ("[broker\n", "not valid TOML"),
])
def test_bad_files_are_refused_with_the_reason(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load(path, env={})


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "nope.toml", env={})


def test_role_configs_validate(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no app"):
        load(env={}).sink()
    path = tmp_path / "p.toml"
    path.write_text("[broker]\nmax_queue = 0\n")
    with pytest.raises(ConfigError, match="max_queue"):
        load(path, env={}).broker()


def test_endpoints_fill_in_from_run_dir(tmp_path: Path) -> None:
    s = load(env={}, flags={"endpoints.run_dir": str(tmp_path), "endpoints.sync": "tcp://h:1"})
    ep = s.endpoints()
    assert ep.sync == "tcp://h:1"
    assert ep.frontend == f"ipc://{tmp_path}/frontend.sock"


def test_every_setting_has_an_environment_name() -> None:
    names = [s.env for s in schema().values()]
    assert len(set(names)) == len(names)
    assert "PIPELINE_BROKER_HEARTBEAT_INTERVAL_MS" in names


def _cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=60)


def _env(**extra: str) -> dict[str, str]:
    import os

    base = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    base["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    return {**base, **extra}


def test_config_show_reports_each_source(toml_file: Path, tmp_path: Path) -> None:
    out = _cli("--config", str(toml_file), "--log-level", "INFO", "config", "show", "--json",
               env=_env(PIPELINE_BROKER_MAX_QUEUE="700"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    settings = doc["settings"]
    assert doc["config_file"] == str(toml_file)
    assert settings["broker"]["max_queue"] == {"value": 700, "source": "env"}
    assert settings["worker"]["credit"] == {"value": 16, "source": "file"}
    assert settings["log"]["level"] == {"value": "INFO", "source": "flag"}
    assert settings["sink"]["fsync"] == {"value": "interval", "source": "default"}


def test_config_show_plain_text_when_piped(toml_file: Path, tmp_path: Path) -> None:
    out = _cli("config", "show", "--config", str(toml_file), env=_env(), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert f"configuration file: {toml_file}" in out.stdout
    line = next(ln for ln in out.stdout.splitlines() if "worker.credit" in ln)
    assert line.split() == ["worker.credit", "16", "file"]
    assert "\x1b[" not in out.stdout, "no colour codes when piped"


def test_a_bad_setting_stops_a_role_with_exit_code_2(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text("[broker]\nliveness = 0\n")
    out = _cli("--config", str(path), "broker", env=_env(), cwd=tmp_path)
    assert out.returncode == 2
    assert "configuration error" in out.stderr and "liveness" in out.stderr


def test_table_settings_from_file_and_env(tmp_path: Path) -> None:
    if ("broker", "max_attempts_per_process") not in schema():
        pytest.skip("this BrokerConfig has no table-valued setting")
    path = tmp_path / "p.toml"
    path.write_text("[broker.max_attempts_per_process]\nslow = 2\n")
    assert load(path, env={}).broker().max_attempts_per_process == {"slow": 2}
    s = load(path, env={"PIPELINE_BROKER_MAX_ATTEMPTS_PER_PROCESS": '{"fast": 5}'})
    assert s.broker().max_attempts_per_process == {"fast": 5}


def test_operations_doc_lists_every_setting() -> None:
    text = (Path(__file__).resolve().parents[1] / "docs" / "OPERATIONS.md").read_text()
    # [broker] mirrors brokers/config.py, which its owner extends; the doc points there.
    missing = [s.env for s in schema().values()
               if s.section != "broker" and f"`{s.env}`" not in text]
    assert not missing, f"docs/OPERATIONS.md lacks {missing}"
