"""
The client's rough edges, found by trying it as a new user: each test here
failed before its fix.  Unit tests drive the client's own code with fakes;
the others run C{python -m ocm.client} against a real server on 127.0.0.1
(in a pseudo-terminal where the terminal matters).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from typing import Any

from twisted.trial import unittest

from ocm.client.session import EXIT_CLOSED, EXIT_OK
from ocm.client.tunnel import no_delay
from tests.helpers import sleep, wait_until
from tests.test_client_end_to_end import ClientCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class FakeTCP:
    """A TCP transport that records C{setTcpNoDelay}."""

    def __init__(self, fails: bool = False) -> None:
        self.no_delay: bool | None = None
        self.fails = fails

    def setTcpNoDelay(self, enabled: bool) -> None:
        """Record the setting (or fail as a closed socket does)."""
        if self.fails:
            raise OSError("closed")
        self.no_delay = enabled


class FakeTLS:
    """A TLS transport: no C{setTcpNoDelay} of its own, a TCP one beneath."""

    def __init__(self, tcp: FakeTCP) -> None:
        self.transport = tcp


class ImportTests(unittest.TestCase):
    """The client stands apart from the server."""

    def test_no_server_modules(self) -> None:
        """Importing every client module loads only ocm.wire, ocm.sealing, ocm.tls and the client's own."""
        code = (
            "import sys\n"
            "import ocm.client.cli, ocm.client.app, ocm.client.interactive, ocm.client.tunnel\n"
            "import ocm.client.flows, ocm.client.options, ocm.client.requests, ocm.client.session, ocm.client.render\n"
            "import ocm.tls\n"
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('ocm'))))\n"
        )
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30, check=True)
        loaded = set(done.stdout.split())
        shared = {"ocm", "ocm.wire", "ocm.sealing", "ocm.tls"}
        self.assertEqual({m for m in loaded if not m.startswith("ocm.client")} - shared, set())

    def test_no_delay(self) -> None:
        """Nagle goes off on a TCP transport, or on the one beneath TLS; a closed socket is no error."""
        tcp = FakeTCP()
        no_delay(tcp)
        self.assertIs(tcp.no_delay, True)
        beneath = FakeTCP()
        no_delay(FakeTLS(beneath))
        self.assertIs(beneath.no_delay, True)
        no_delay(FakeTCP(fails=True))
        no_delay(object())


async def exited(child: Any, timeout: float = 5.0) -> tuple[int | None, str]:
    """
    Wait (bounded) for a pexpect child to end: its exit status (None if a
    signal killed it) and what it wrote that no C{expect} has consumed.
    """
    import pexpect

    seen = [child.buffer]
    child.buffer = ""
    for _ in range(int(timeout / 0.05)):
        try:
            while True:
                seen.append(child.read_nonblocking(4096, timeout=0))
        except (pexpect.TIMEOUT, pexpect.EOF):
            pass
        if not child.isalive():
            return child.exitstatus, "".join(seen)
        await sleep(0.05)
    raise AssertionError(f"the client did not exit within {timeout}s; it wrote {''.join(seen)!r}")


class PromptUITests(unittest.TestCase):
    """The interactive front end's output without a prompt running."""

    def test_straight_out(self) -> None:
        """With no prompt on the screen, a line is written (and flushed) at once; history dimmed."""
        from ocm.client.interactive import PromptUI

        stream = io.StringIO()
        ui = PromptUI(stream)
        ui.out("* room closed: the host left")
        self.assertEqual(stream.getvalue(), "* room closed: the host left\n")
        ui.out("[history] 12:00 bob: hi")
        self.assertEqual(stream.getvalue().splitlines()[1], "\x1b[2m[history] 12:00 bob: hi\x1b[0m")


class EndingTests(ClientCase):
    """The interactive client says why its session ended before it exits."""

    async def test_room_closed(self) -> None:
        """The host leaves: the member's terminal shows why, then the client exits 4."""
        alice = self.client("--name", "alice", "--create", "r")
        await self.joined(alice)
        child, expect = self.pty_client("--host", "127.0.0.1", "--password", "", "--name", "bob", "--join", "r")
        await expect("joined room")
        await wait_until(lambda: alice.has("* bob joined"), 5, "bob's join")
        alice.send("/leave")
        self.assertEqual(await self.ended(alice), EXIT_OK)
        code, output = await exited(child)
        self.assertEqual(code, EXIT_CLOSED, output)
        self.assertIn("room closed: the host left", output)
