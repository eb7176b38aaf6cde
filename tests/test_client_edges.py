"""
The client's rough edges, found by trying it as a new user: each test here
failed before its fix.  Unit tests drive the client's own code with fakes;
the others run C{python -m ocm.client} against a real server on 127.0.0.1
(in a pseudo-terminal where the terminal matters).
"""

from __future__ import annotations

import os
import subprocess
import sys

from twisted.trial import unittest

from ocm.client.tunnel import no_delay

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
