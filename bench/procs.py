"""
What the benchmarks that start servers share: pinning a process to a
core, picking a free port, waiting (bounded) for a server to listen, and
stopping it.
Imported by the scripts beside it (C{python bench/NAME.py} puts this
directory on C{sys.path}).
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from typing import Any


def pinned(core: str, argv: list[str]) -> list[str]:
    """C{argv} run on C{core} when C{taskset} exists."""
    return ["taskset", "-c", core, *argv] if shutil.which("taskset") else argv


def free_port(kind: int) -> int:
    """A port of C{kind} (C{socket.SOCK_STREAM} or C{SOCK_DGRAM}) on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, deadline: float, proc: subprocess.Popen[Any] | None = None) -> None:
    """
    Wait until something accepts TCP connections on 127.0.0.1:C{port}, up
    to C{deadline} (C{time.monotonic()}); exit if it does not, or if
    C{proc}, the server, exits first.
    """
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"the server exited ({proc.returncode}) before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def stop(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM, then SIGKILL after 10 s; reaped either way."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
