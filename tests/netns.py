"""Network namespaces for multi-host tests: two namespaces joined by a veth pair.

`NetPair` creates `<name>-s` (servers, 10.77.0.1) and `<name>-c` (clients, 10.77.0.2) with
a veth link between them, and deletes both on exit (deleting a namespace removes its end of
the link). `enter(ns)` is Python code that moves a fresh interpreter into a namespace before
it does anything else (a `prelude` for `pipeline.runner.spawn`); `exec_cmd(ns)` prefixes a
command with `ip netns exec`. Needs root and `ip` (iproute2); `unavailable()` says why not.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence

SERVER_IP = "10.77.0.1"
CLIENT_IP = "10.77.0.2"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10,
                          check=check)


def unavailable() -> str | None:
    """None when namespaces can be made here; otherwise the reason they cannot."""
    if shutil.which("ip") is None:
        return "`ip` (iproute2) is not installed"
    probe = f"plprobe{os.getpid()}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip() or made.returncode}"
    _ip("netns", "del", probe, check=False)
    return None


class NetPair:
    """Two namespaces and a veth pair; a context manager that cleans up after itself."""

    def __init__(self, name: str) -> None:
        self.server = f"{name}-s"
        self.client = f"{name}-c"
        self._veth = (f"{name[:9]}a", f"{name[:9]}b")

    def __enter__(self) -> NetPair:
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def _create(self) -> None:
        a, b = self._veth
        _ip("netns", "add", self.server)
        _ip("netns", "add", self.client)
        _ip("link", "add", a, "netns", self.server, "type", "veth", "peer", "name", b,
            "netns", self.client)
        for ns, dev, addr in ((self.server, a, SERVER_IP), (self.client, b, CLIENT_IP)):
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")

    def close(self) -> None:
        for ns in (self.server, self.client):
            _ip("netns", "del", ns, check=False)

    def __exit__(self, *exc: object) -> None:
        self.close()


def exists(ns: str) -> bool:
    return ns in _ip("netns", "list").stdout.split()


def exec_cmd(ns: str, cmd: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *cmd]


def enter(ns: str) -> str:
    """A one-line prelude that moves the interpreter into network namespace `ns`."""
    code = ("import ctypes, os\n"
            f"fd = os.open('/run/netns/{ns}', os.O_RDONLY)\n"
            "if ctypes.CDLL(None, use_errno=True).setns(fd, 0x40000000) != 0:\n"
            "    raise OSError(ctypes.get_errno(), 'setns')\n"
            "os.close(fd)\n")
    return f"exec({code!r}); "
