"""
The benchmark's yardsticks still speak the SPEC: ocm's own client, run as
people run it, chats through the native relay C{bench/crelay.c} (a second,
independent implementation of the wire contract) and through the naive one,
C{bench/naive.py}.  This keeps the relays that the performance figures are
compared with honest.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from twisted.trial import unittest

from ocm.client.session import EXIT_OK
from tests.helpers import free_port, wait_until
from tests.test_client_end_to_end import ROOT, ClientProcess, spawn_client

GCC = shutil.which("gcc")


class YardstickCase(unittest.TestCase):
    """ocm's client against a relay started by L{server_argv} on 127.0.0.1."""

    timeout = 60

    def server_argv(self, tcp_port: int, udp_port: int) -> list[str]:
        """The command line of the relay under test."""
        raise NotImplementedError

    def setUp(self) -> None:
        self.tcp_port = free_port(socket.SOCK_STREAM)
        udp_port = free_port(socket.SOCK_DGRAM)
        relay = subprocess.Popen(self.server_argv(self.tcp_port, udp_port), stderr=subprocess.PIPE, cwd=ROOT)

        def stop() -> None:
            relay.terminate()
            relay.communicate(timeout=10)

        self.addCleanup(stop)
        deadline = time.monotonic() + 15
        while True:  # the relay listens once it has started (Python: about a second)
            try:
                socket.create_connection(("127.0.0.1", self.tcp_port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or relay.poll() is not None:
                    raise
                time.sleep(0.05)

    def client(self, *args: str) -> ClientProcess:
        """C{python -m ocm.client} against the relay, killed at the end."""
        return spawn_client(self, self.tcp_port, *args)

    async def chat(self) -> None:
        """Create, join, chat both ways (Japanese text); both clients exit 0 at end of input."""
        alice = self.client("--name", "alice", "--create", "部屋")
        await wait_until(lambda: alice.has("* joined room '部屋' as alice"), 10, f"alice's welcome: {alice.out!r} {alice.err!r}")
        bob = self.client("--name", "bob", "--join", "部屋")
        await wait_until(lambda: bob.has("* joined room '部屋' as bob (host: alice"), 10, f"bob's welcome: {bob.out!r} {bob.err!r}")
        await wait_until(lambda: alice.has("* bob joined"), 10, "the join notice")
        alice.send("こんにちは、ボブ")
        await wait_until(lambda: any(line.endswith(" alice: こんにちは、ボブ") for line in bob.lines), 10, "alice's line")
        bob.send("やあ 🌸")
        await wait_until(lambda: any(line.endswith(" bob: やあ 🌸") for line in alice.lines), 10, "bob's line")
        self.assertFalse(any("こんにちは" in line for line in alice.lines), "not relayed to its sender")
        for proc in (bob, alice):
            proc.close_stdin()
            await wait_until(lambda: proc.ended.called, 10, "client exit")  # noqa: B023
            self.assertEqual(await proc.ended, EXIT_OK)


class CRelayTests(YardstickCase):
    """Through the C relay, built with gcc."""

    def server_argv(self, tcp_port: int, udp_port: int) -> list[str]:
        if GCC is None:
            raise unittest.SkipTest("no gcc to build bench/crelay.c")
        where = tempfile.mkdtemp(prefix="crelay-")
        self.addCleanup(shutil.rmtree, where, True)
        binary = os.path.join(where, "crelay")
        subprocess.run([GCC, "-O2", "-Wall", "-Werror", "-o", binary, os.path.join(ROOT, "bench", "crelay.c")], check=True, timeout=60)
        return [binary, "--tcp", str(tcp_port), "--udp", str(udp_port)]

    async def test_chat(self) -> None:
        """Create, join, chat both ways (Japanese text); both clients exit 0 at end of input."""
        await self.chat()


class NaiveRelayTests(YardstickCase):
    """Through ocm with its fast paths patched out."""

    def server_argv(self, tcp_port: int, udp_port: int) -> list[str]:
        return [sys.executable, os.path.join(ROOT, "bench", "naive.py"), "--tcp", str(tcp_port), "--udp", str(udp_port), "--interface", "127.0.0.1"]

    async def test_chat(self) -> None:
        """Create, join, chat both ways (Japanese text); both clients exit 0 at end of input."""
        await self.chat()
