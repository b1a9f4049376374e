"""CurveZMQ for deployments across hosts: keys, the allow-list (ZAP) and identities.

With `[security] curve = true` every socket is encrypted and authenticated:

- The broker and the sink are CURVE *servers* sharing one key pair (`server_secret`, a
  `.key_secret` file written by `pipeline keys generate`). Each runs a ZAP handler
  (`AllowList`, pyzmq's `ThreadAuthenticator` on the role's own context) that admits only
  the public keys in the `allow` directory (`<name>.key` files; the file's stem is the
  client's name) and the server key itself (the sink connects to the broker with it).
- Workers, producers and the admin commands are CURVE *clients*: their context carries
  their key pair (`client_secret`) and the server's public key (`server_public`), so every
  socket they open (reconnections included) is a client of that server.

Identity: ZAP returns the allow-list name as the connection's User-Id. The sink reads it from
every UPDATE message and rewrites each update's `worker` field before the engine journals
it, so the journal records who really sent an update: `name` when the worker calls itself
by its allow-list name, otherwise `name/claimed` (several workers may share one key, e.g. a
scaled compose service; the part before the slash is authenticated, the rest is not).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from pipeline import protocol as proto
from pipeline.config import CurveKeys, Settings
from pipeline.errors import ConfigError, DecodeError

log = logging.getLogger(__name__)

ZAP_DOMAIN = "pipeline"
SERVER_NAME = "server"


# -- keys --------------------------------------------------------------------------------------
def generate_keys(directory: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
    """Write `<name>.key` (public) and `<name>.key_secret` (mode 0600) into `directory`."""
    base = Path(directory)
    base.mkdir(parents=True, exist_ok=True)
    public, secret = (base / f"{name}.key", base / f"{name}.key_secret")
    if public.exists() or secret.exists():
        raise ConfigError(f"keys for {name!r} already exist in {base}; not overwriting")
    pub, sec = zmq.curve_keypair()
    _write_cert(public, pub, None, name)
    _write_cert(secret, pub, sec, name)
    return public, secret


def _write_cert(path: Path, public: bytes, secret: bytes | None, name: str) -> None:
    lines = ["#   ZeroMQ CURVE certificate (pipeline keys generate)",
             "metadata", f'    name = "{name}"', "curve", f'    public-key = "{public.decode()}"']
    if secret is not None:
        lines.append(f'    secret-key = "{secret.decode()}"')
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if secret else 0o644)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write("\n".join(lines) + "\n")


def _load(path: str | None, what: str, secret: bool) -> tuple[bytes, bytes | None]:
    if not path:
        raise ConfigError(f"[security] curve is on but {what} is not set")
    try:
        public, sec = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"[security] {what}: cannot load {path}: {exc}") from exc
    if secret and sec is None:
        raise ConfigError(f"[security] {what}: {path} holds no secret key")
    return public, sec


def allowed_keys(directory: str) -> dict[bytes, str]:
    """{z85 public key: name} for every `<name>.key` file in the allow-list directory."""
    base = Path(directory)
    if not base.is_dir():
        raise ConfigError(f"[security] allow: {directory} is not a directory")
    return {zmq.auth.load_certificate(p)[0]: p.stem for p in sorted(base.glob("*.key"))}


def server_keys(settings: Settings) -> CurveKeys:
    public, secret = _load(settings.get("security", "server_secret"), "server_secret", True)
    allow = settings.get("security", "allow")
    if not allow:
        raise ConfigError("[security] curve is on but allow (the allow-list directory) is "
                          "not set: the broker and the sink would admit nobody")
    names = {**allowed_keys(allow), public: SERVER_NAME}
    return CurveKeys(public, secret or b"", public, names)


def client_keys(settings: Settings) -> CurveKeys:
    public, secret = _load(settings.get("security", "client_secret"), "client_secret", True)
    server, _ = _load(settings.get("security", "server_public"), "server_public", False)
    return CurveKeys(public, secret or b"", server, {})


# -- sockets and contexts ----------------------------------------------------------------------
def apply_curve(sock: zmq.Socket[Any], keys: CurveKeys | None, *, server: bool) -> None:
    """Make `sock` a CURVE server (ZAP domain set) or a client of `keys.server_public`."""
    if keys is None:
        return
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    if server:
        sock.zap_domain = ZAP_DOMAIN.encode()
        sock.curve_server = True
    else:
        sock.curve_serverkey = keys.server_public


def client_defaults(ctx: zmq.Context[Any], settings: Settings) -> None:
    """Make every socket `ctx` creates a CURVE client of the deployment's server key."""
    if not settings.get("security", "curve"):
        return
    keys = client_keys(settings)
    ctx.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
    ctx.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
    ctx.setsockopt(zmq.CURVE_SERVERKEY, keys.server_public)


class AllowList(ThreadAuthenticator):
    """ZAP handler: admits the allow-listed keys; the User-Id is the key's name."""

    def __init__(self, ctx: zmq.Context[Any], names: Mapping[bytes, str]) -> None:
        super().__init__(ctx, log=logging.getLogger(f"{__name__}.zap"))
        self.names = dict(names)

    def callback(self, domain: str, key: bytes) -> bool:
        allowed = key in self.names
        if not allowed:
            log.warning("CURVE client refused: unknown key %s", key.decode(errors="replace"))
        return allowed

    def curve_user_id(self, client_public_key: bytes) -> str:
        return self.names[zmq.utils.z85.encode(client_public_key)]


@contextlib.contextmanager
def server_context(settings: Settings, role: str) -> Iterator[zmq.Context[Any]]:
    """A context for the broker or the sink; with CURVE, its ZAP handler runs meanwhile."""
    ctx: zmq.Context[Any] = zmq.Context()
    auth = None
    try:
        if settings.get("security", "curve"):
            auth = AllowList(ctx, server_keys(settings).names)
            auth.start()
            auth.configure_curve_callback(ZAP_DOMAIN, credentials_provider=auth)
            log.info("%s: CURVE on, %d keys allowed", role, len(auth.names))
        yield ctx
    finally:
        if auth is not None:
            auth.stop()
        ctx.term()


@contextlib.contextmanager
def client_context(settings: Settings) -> Iterator[zmq.Context[Any]]:
    """A fresh context for client sockets (workers, admin tools), with CurveZMQ client keys
    applied when configured. Sockets still open at the end are closed without linger;
    closed ones keep their own linger (a worker's last UPDATE still goes out)."""
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        client_defaults(ctx, settings)
        yield ctx
    finally:
        ctx.destroy(linger=0)


# -- identity ----------------------------------------------------------------------------------
def stamp_identity(frames: list[zmq.Frame]) -> list[bytes]:
    """An UPDATE message with each update's `worker` set from the connection's User-Id.

    A message without a User-Id (no CURVE) or whose header does not decode is passed on
    unchanged: the engine reports the malformed ones."""
    raw = [f.bytes for f in frames]
    try:
        user = frames[0].get("User-Id")
    except zmq.ZMQError:
        return raw
    if len(raw) < 2 or not user:
        return raw
    try:
        header = proto.unpack(raw[1])
        updates = header["updates"]
        for u in updates:
            claimed = u.get("worker")
            u["worker"] = user if claimed in (None, "", user) else f"{user}/{claimed}"
    except (DecodeError, KeyError, TypeError, AttributeError):
        return raw
    raw[1] = proto.pack(header)
    return raw
