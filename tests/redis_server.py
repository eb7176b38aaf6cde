"""
A real redis-server for the cluster tests: started by the test on an
ephemeral loopback port in a temporary directory, stopped by it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time

from twisted.trial import unittest

from tests.helpers import free_port

REDIS_SERVER = shutil.which("redis-server")


def require_redis() -> str:
    """
    The redis-server binary.  Outside CI the cluster tests are skipped, with
    the reason, where it is missing; CI (which installs it) fails instead.
    """
    if REDIS_SERVER is None:
        if os.environ.get("CI"):
            raise AssertionError("redis-server is missing: .ci/run installs it")
        raise unittest.SkipTest("redis-server is not installed (apt-get install redis-server)")
    return REDIS_SERVER


class RedisServer:
    """One redis-server process on 127.0.0.1, no persistence."""

    def __init__(self, directory: str, tls: dict[str, str] | None = None) -> None:
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        self.port = free_port(socket.SOCK_STREAM)
        #: Certificate files (L{tests.certs}): then TLS only, and a plain port for the test's own inspection.
        self.tls = tls
        self.plain_port = free_port(socket.SOCK_STREAM) if tls else self.port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The --redis URL of this server."""
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        """Start it; return once it answers PING (bounded)."""
        binary = require_redis()
        argv = [binary, "--port", str(self.plain_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", self.directory]
        if self.tls:
            argv += ["--tls-port", str(self.port), "--tls-cert-file", self.tls["server.pem"], "--tls-key-file", self.tls["server.key"],
                     "--tls-ca-cert-file", self.tls["ca.pem"], "--tls-auth-clients", "no"]
        self.process = subprocess.Popen(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ping():
                return
            time.sleep(0.02)
        self.stop()
        raise AssertionError(f"redis-server did not answer on port {self.port} within {timeout}s")

    def ping(self) -> bool:
        """Whether it answers PING now."""
        try:
            with socket.create_connection(("127.0.0.1", self.plain_port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def command(self, *args: str) -> bytes:
        """One command, its raw reply (for the tests' own inspection)."""
        payload = b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args)
        with socket.create_connection(("127.0.0.1", self.plain_port), timeout=2) as s:
            s.sendall(payload)
            time.sleep(0.05)
            return s.recv(65536)

    def stop(self) -> None:
        """Stop it (SIGKILL after 5 s)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None
