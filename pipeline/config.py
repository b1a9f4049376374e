"""Configuration: frozen dataclasses with units in the names, and where they come from.

`Endpoints` names the six sockets of a deployment (see docs/PROTOCOL.md). The embedded
default puts them all under one run directory as `ipc://` paths.

Every role reads one TOML file (`pipeline.toml`: `[endpoints]`, `[broker]`, `[sink]`,
`[worker]`, `[heavy]`, `[metrics]`, `[security]`, `[log]`). `load()` layers it: defaults,
then the file (`--config FILE` or `$PIPELINE_CONFIG`), then `PIPELINE_<SECTION>_<KEY>`
environment variables, then command-line flags; the returned `Settings` remembers which
layer set each value and builds the role dataclasses (`Settings.worker()`, ...).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError

_NAMESPACE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True, slots=True)
class Endpoints:
    frontend: str
    backend: str
    control: str
    updates: str
    events: str
    sync: str

    @classmethod
    def embedded(cls, run_dir: str | os.PathLike[str]) -> Endpoints:
        """`ipc://` endpoints in one run directory (one host)."""
        base = Path(run_dir)
        base.mkdir(parents=True, exist_ok=True)
        names = ("frontend", "backend", "control", "updates", "events", "sync")
        paths = {n: f"ipc://{base / n}.sock" for n in names}
        longest = max(len(p) for p in paths.values())
        if longest > 100:
            raise ConfigError(f"run directory path too long for ipc:// ({longest} > 100 chars)")
        return cls(**paths)

    @classmethod
    def tcp(cls, host: str, base_port: int) -> Endpoints:
        """`tcp://` endpoints on consecutive ports (many hosts)."""
        names = ("frontend", "backend", "control", "updates", "events", "sync")
        return cls(**{n: f"tcp://{host}:{base_port + i}" for i, n in enumerate(names)})


def check_namespace(namespace: str) -> str:
    if not _NAMESPACE.match(namespace):
        raise ConfigError(f"namespace must match {_NAMESPACE.pattern}, got {namespace!r}")
    return namespace


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    endpoints: Endpoints
    app: str
    name: str = field(default_factory=lambda: f"w{os.getpid()}")
    credit: int = 64  # the least credit granted; pipeline/credit.py grows it with the pace
    max_credit: int = 2048  # the most (equal to `credit`: a fixed credit)
    heartbeat_interval_ms: int = 1000
    liveness: int = 3
    snapshot_timeout_ms: int = 5000
    namespace: str = "default"
    max_message_bytes: int = 256 * 1024 * 1024
    # Heavy arrays across hosts (docs/HEAVY.md): "on" sends heavy outputs as blob frames and
    # fetches heavy inputs from the sink; "off" uses the sink's /dev/shm; "auto" is "on" when
    # the `updates` endpoint is tcp:// to an address that is not on this host.
    heavy_remote: str = "auto"
    heavy_cache_bytes: int = 1 << 30  # remote: LRU of fetched heavy inputs, by (key, version)


@dataclass(frozen=True, slots=True)
class SinkConfig:
    endpoints: Endpoints
    app: str
    journal_dir: str
    fsync: str = "interval"
    fsync_interval_ms: int = 10
    strict: bool = False
    recipes: str | None = None
    namespace: str = "default"
    batch_max: int = 4096
    max_message_bytes: int = 256 * 1024 * 1024
    # The de-duplication horizon (docs/RELIABILITY.md): how long, in broker time from a
    # task's first dispatch, and for how many decisions the sink remembers a task id. 0: no
    # bound of that kind.
    dedup_window_s: float = 3600.0
    dedup_max_entries: int = 5_000_000  # about 150 bytes each: 750 MB when full
    # CurveZMQ keys (set from [security] by the CLI; not a file setting itself).
    curve: CurveKeys | None = None


# -- one file for every role: pipeline.toml, then the environment, then flags -----------------
SOURCES = ("default", "file", "env", "flag")
ENDPOINT_NAMES = ("frontend", "backend", "control", "updates", "events", "sync")
ENV_PREFIX = "PIPELINE_"
# Environment names kept from before the configuration file existed.
ENV_ALIASES = {"PIPELINE_RUN_DIR": ("endpoints", "run_dir")}
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


@dataclass(frozen=True, slots=True)
class Setting:
    """One configurable value: `[section] key`, its type and default."""

    section: str
    key: str
    kind: type
    default: Any
    optional: bool = False
    help: str = ""

    @property
    def env(self) -> str:
        return f"{ENV_PREFIX}{self.section}_{self.key}".upper()


def _from_dataclass(section: str, cls: type, skip: tuple[str, ...]) -> list[Setting]:
    """Settings mirroring a config dataclass (its field names, types and defaults)."""
    out = []
    for f in fields(cls):
        if f.name in skip:
            continue
        annotation = str(f.type)
        base = annotation.split(" |")[0].split("[")[0]
        kind = {"int": int, "bool": bool, "float": float, "dict": dict}.get(base, str)
        default = f.default
        if default is MISSING:
            default = None if f.default_factory is MISSING else f.default_factory()
        out.append(Setting(section, f.name, kind, default, "None" in annotation
                           or default is None))
    return out


def _schema() -> dict[tuple[str, str], Setting]:
    from brokers.config import BrokerConfig  # pure Python, no sockets

    items = [Setting("endpoints", "run_dir", str, ".pipeline",
                     help="ipc:// endpoints go here unless named one by one")]
    items += [Setting("endpoints", n, str, None, True, "default: ipc:// under run_dir")
              for n in ENDPOINT_NAMES]
    items += _from_dataclass("broker", BrokerConfig, ENDPOINT_NAMES[:3])
    items += [s if s.key != "journal_dir" else Setting("sink", "journal_dir", str, "journal")
              for s in _from_dataclass("sink", SinkConfig, ("endpoints", "namespace", "curve"))]
    items += _from_dataclass("worker", WorkerConfig, ("endpoints", "namespace"))
    items += [
        Setting("heavy", "namespace", str, "default", help="shared-memory namespace"),
        Setting("heavy", "min_shm_bytes", int, 1 << 30, help="doctor: /dev/shm size wanted"),
        Setting("metrics", "host", str, "0.0.0.0", help="address the endpoints listen on"),
        Setting("metrics", "broker_port", int, 0, help="0: off"),
        Setting("metrics", "sink_port", int, 0, help="0: off"),
        Setting("metrics", "worker_port", int, 0, help="0: off"),
        Setting("security", "curve", bool, False, help="CurveZMQ on every tcp:// socket"),
        Setting("security", "server_secret", str, None, True,
                "broker and sink: the server's .key_secret file"),
        Setting("security", "server_public", str, None, True,
                "clients: the server's public .key file"),
        Setting("security", "client_secret", str, None, True,
                "workers, producers, tools: this client's .key_secret file"),
        Setting("security", "allow", str, None, True,
                "broker and sink: directory of allowed client public keys (*.key)"),
        Setting("log", "level", str, "WARNING"),
        Setting("log", "json", bool, False, help="one JSON object per log line"),
    ]
    return {(s.section, s.key): s for s in items}


SCHEMA: dict[tuple[str, str], Setting] = {}


def schema() -> dict[tuple[str, str], Setting]:
    if not SCHEMA:
        SCHEMA.update(_schema())
    return SCHEMA


@dataclass(frozen=True, slots=True)
class Settings:
    """The effective configuration of one process, with where each value came from."""

    values: dict[tuple[str, str], Any]
    sources: dict[tuple[str, str], str]
    path: str | None = None

    def get(self, section: str, key: str) -> Any:
        return self.values[(section, key)]

    def section(self, name: str) -> dict[str, Any]:
        return {k: v for (s, k), v in self.values.items() if s == name}

    def endpoints(self) -> Endpoints:
        given = {n: self.get("endpoints", n) for n in ENDPOINT_NAMES}
        if all(given.values()):
            return Endpoints(**given)
        base = Endpoints.embedded(self.get("endpoints", "run_dir"))
        return Endpoints(**{n: given[n] or getattr(base, n) for n in ENDPOINT_NAMES})

    def broker(self) -> Any:
        from brokers.config import BrokerConfig

        ep = self.endpoints()
        return BrokerConfig(frontend=ep.frontend, backend=ep.backend, control=ep.control,
                            **self.section("broker"))

    def sink(self, curve: CurveKeys | None = None) -> SinkConfig:
        values = _required_app(self.section("sink"), "sink")
        return SinkConfig(endpoints=self.endpoints(), namespace=self.get("heavy", "namespace"),
                          curve=curve, **values)

    def worker(self) -> WorkerConfig:
        values = _required_app(self.section("worker"), "worker")
        if values["name"] is None:
            del values["name"]
        return WorkerConfig(endpoints=self.endpoints(),
                            namespace=self.get("heavy", "namespace"), **values)

    def rows(self) -> list[tuple[str, str, Any, str]]:
        """(section, key, value, source) for every setting, in schema order."""
        return [(s, k, self.values[(s, k)], self.sources[(s, k)]) for (s, k) in schema()]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"config_file": self.path, "settings": {}}
        for section, key, value, source in self.rows():
            out["settings"].setdefault(section, {})[key] = {"value": value, "source": source}
        return out


def _required_app(values: dict[str, Any], role: str) -> dict[str, Any]:
    if not values.get("app"):
        raise ConfigError(f"{role}: no app: give --app, [{role}] app in the file, "
                          f"or PIPELINE_{role.upper()}_APP")
    return values


def load(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None,
         flags: Mapping[str, Any] | None = None) -> Settings:
    """Defaults, overridden by the TOML file, by `PIPELINE_<SECTION>_<KEY>`, then by flags
    (`{"section.key": value}`; None means not given)."""
    env = os.environ if env is None else env
    path = path or env.get("PIPELINE_CONFIG") or None
    values = {k: s.default for k, s in schema().items()}
    sources = dict.fromkeys(values, "default")
    layers = [("file", _file_layer(path) if path else {}), ("env", _env_layer(env)),
              ("flag", _flag_layer(flags or {}))]
    for source, layer in layers:
        for key, value in layer.items():
            values[key] = value
            sources[key] = source
    return Settings(values, sources, str(path) if path else None)


def _file_layer(path: str | os.PathLike[str]) -> dict[tuple[str, str], Any]:
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    out: dict[tuple[str, str], Any] = {}
    for section, table in doc.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: {section!r} must be a [section]")
        for key, value in table.items():
            setting = _setting(section, key, f"{path}")
            out[(section, key)] = _check(setting, value, str(path))
    return out


def _env_layer(env: Mapping[str, str]) -> dict[tuple[str, str], Any]:
    by_name = {s.env: s for s in schema().values()}
    out: dict[tuple[str, str], Any] = {}
    for name, raw in env.items():
        setting = by_name.get(name)
        if setting is None and name in ENV_ALIASES:
            setting = schema()[ENV_ALIASES[name]]
        if setting is not None:
            out[(setting.section, setting.key)] = _parse(setting, raw, name)
    return out


def _flag_layer(flags: Mapping[str, Any]) -> dict[tuple[str, str], Any]:
    out: dict[tuple[str, str], Any] = {}
    for dotted, value in flags.items():
        if value is None:
            continue
        section, _, key = dotted.partition(".")
        out[(section, key)] = _check(_setting(section, key, "flags"), value, f"--{key}")
    return out


def _setting(section: str, key: str, where: str) -> Setting:
    setting = schema().get((section, key))
    if setting is None:
        known = sorted({k for s, k in schema() if s == section})
        hint = f"; known keys: {', '.join(known)}" if known else "; unknown section"
        raise ConfigError(f"{where}: unknown setting [{section}] {key}{hint}")
    return setting


def _parse(setting: Setting, raw: str, where: str) -> Any:
    """An environment string as the setting's type."""
    text = raw.strip()
    if setting.optional and text == "":
        return None
    if setting.kind is dict:
        return _check(setting, _json_table(text, where), where)
    if setting.kind is bool:
        if text.lower() not in _TRUE | _FALSE:
            raise ConfigError(f"{where}: want true or false, got {raw!r}")
        return text.lower() in _TRUE
    try:
        return setting.kind(text)
    except ValueError as exc:
        raise ConfigError(f"{where}: want {setting.kind.__name__}, got {raw!r}") from exc


def _json_table(text: str, where: str) -> Any:
    import json

    try:
        return json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{where}: want a JSON object, got {text!r}") from exc


def _check(setting: Setting, value: Any, where: str) -> Any:
    """A file or flag value, type-checked (an int is accepted where a float is wanted)."""
    if value is None and setting.optional:
        return None
    kind = setting.kind
    ok = type(value) is kind or (kind is float and type(value) is int)
    if not ok:
        raise ConfigError(f"{where}: [{setting.section}] {setting.key} must be "
                          f"{kind.__name__}, not {value!r}")
    return float(value) if kind is float else value


@dataclass(frozen=True, slots=True)
class CurveKeys:
    """CurveZMQ keys of one process (z85 text as bytes); see pipeline/security.py.

    `names` maps each allowed client public key to its name (servers only)."""

    public: bytes
    secret: bytes = field(repr=False)
    server_public: bytes
    names: Mapping[bytes, str] = field(default_factory=dict, repr=False)
