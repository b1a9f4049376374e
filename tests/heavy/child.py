"""A helper process for the heavy-zone tests, driven line by line over stdin/stdout.

Usage: python -m tests.heavy.child <command> <namespace> [args]. Every message is one JSON
line; the test waits for each line (never sleeps), and answers with a line where asked.

Commands:
  export N        alloc N float64 = arange(N), export, print the descriptor, then wait;
                  on "write": try a plain write (expect ValueError), then force the numpy
                  flag back on and write (the kernel must stop it: SIGSEGV).
  hold N          alloc N float64, fill half, print {"seg": name}; then block on stdin.
  read DESC       open the descriptor, print {"sum": ...}; on "release" drop the array and
                  print {"released": true}; then wait for EOF.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from pipeline.heavy import HeavyAllocator, open_array


def say(obj: object) -> None:
    print(json.dumps(obj), flush=True)


def wait() -> str:
    return sys.stdin.readline().strip()


def export(ns: str, n: int) -> None:
    al = HeavyAllocator(ns)
    arr = al.alloc((n,), "float64")
    arr[:] = np.arange(n, dtype=np.float64)
    say(al.export(arr))
    if wait() != "write":
        return
    try:
        arr[0] = -1.0
        say({"plain_write": "allowed"})
    except ValueError:
        say({"plain_write": "ValueError"})
    arr.flags.writeable = True
    arr[0] = -1.0  # mprotect: SIGSEGV here
    say({"forced_write": "allowed"})


def hold(ns: str, n: int) -> None:
    al = HeavyAllocator(ns)
    arr = al.alloc((n,), "float64")
    arr[: n // 2] = 7.0
    say({"pid": __import__("os").getpid()})
    wait()


def read(ns: str, desc_json: str) -> None:
    arr = open_array(json.loads(desc_json), ns)
    say({"sum": float(arr.sum())})
    if wait() == "release":
        del arr
        say({"released": True})
    wait()


def main() -> None:
    cmd, ns, arg = sys.argv[1], sys.argv[2], sys.argv[3]
    if cmd == "export":
        export(ns, int(arg))
    elif cmd == "hold":
        hold(ns, int(arg))
    elif cmd == "read":
        read(ns, arg)
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
