"""
A short version of bench/survive.py, against the real twistd: a paced junk
flood, TCP abuse and churn; the server survives them all without an
unhandled error. (The full runs, with their figures, are in docs/reliability.rst.)
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from twisted.internet import error, utils
from twisted.trial import unittest

from tests.helpers import free_port, sleep, spawn_twistd, tcrp, wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class SurvivalTests(unittest.TestCase):
    """bench/survive.py's three measurements, short."""

    timeout = 120

    async def test_survive(self) -> None:
        """flood, tcp and churn each meet their goal; the log has no traceback."""
        tcp = free_port(socket.SOCK_STREAM)
        proc = spawn_twistd(self, "-n", "ocm", "--tcp", str(tcp), "--udp", "0", "--interface", "127.0.0.1", "--timeout", "2", "--max-connections-per-ip", "100")
        for _ in range(200):
            try:
                await tcrp(tcp, 3, "", {})
                break
            except (error.ConnectError, ConnectionError):
                await sleep(0.05)
        runs: list[tuple[str, ...]] = [
            ("flood", "--duration", "3", "--junk-rate", "20000"),
            ("tcp", "--idle", "200", "--duration", "3"),
            ("churn", "--duration", "5", "--settle", "5"),
        ]
        for run in runs:
            out, err, code = await utils.getProcessOutputAndValue(
                sys.executable, ["bench/survive.py", *run, "--port", str(tcp)], env=dict(os.environ), path=ROOT
            )
            self.assertEqual(code, 0, (run, out, err))
            self.assertIn(run[0].encode() + b":", out)
        proc.transport.signalProcess(signal.SIGTERM)  # type: ignore[union-attr]
        await wait_until(lambda: proc.ended.called, 10)
        self.assertNotIn(b"Traceback", proc.output)
        self.assertNotIn(b"Unhandled", proc.output)
