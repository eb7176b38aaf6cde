"""
The benchmarks in bench/ still run (tiny sizes; no timing is asserted: the
figures are reported, not tested).
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys

from unittest import skipIf

from twisted.trial import unittest

from ocm.relay import fanout

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*argv: str) -> str:
    """Run a bench script; its standard output."""
    result = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    return result.stdout


class BenchSmokeTests(unittest.TestCase):
    """Each benchmark runs and reports its figure."""

    def test_relay_bench(self) -> None:
        """The in-process relay benchmark relays every message to every other member."""
        for loop in ("c", "python"):
            out = run("bench/relay_bench.py", "--rooms", "2", "--members", "3", "--messages", "60", "--loop", loop)
            self.assertIn("120 relayed", out)
            self.assertRegex(out, r"[\d.]+ us CPU per relayed datagram")
            self.assertTrue(out.startswith("Python loop" if loop == "python" or not fanout.NATIVE else "C loop"), out)

    def test_port_bench(self) -> None:
        """The benchmark behind the real port relays every message to every other member."""
        out = run("bench/port_bench.py", "--rooms", "2", "--members", "3", "--messages", "60", "--burst", "8")
        self.assertIn("120 relayed", out)
        self.assertRegex(out, r"[\d.]+ us CPU per relayed datagram")

    @skipIf(platform.python_implementation() != "CPython", "tracemalloc is CPython's")
    def test_memory(self) -> None:
        """The memory benchmark reports bytes per member."""
        out = run("bench/memory.py", "--members", "200")
        match = re.search(r"200 members in 20 rooms: .* (\d+) bytes per member", out)
        self.assertIsNotNone(match, out)

    def test_versus_arguments(self) -> None:
        """The ocm-against-crelay driver checks its arguments and builds crelay (no run: that needs ocmload)."""
        out = run("bench/versus.py", "--ocmload", sys.executable, "--runs", "0", "--servers", "crelay,crelay-mmsg,ocm,ocm-py,ocm=.")
        self.assertIn("delivered/s", out)
        for bad in (["--servers", "nginx"], ["--scenarios", "C"]):
            with self.assertRaises(subprocess.CalledProcessError) as caught:
                run("bench/versus.py", "--ocmload", sys.executable, "--runs", "0", *bad)
            self.assertIn("unknown", caught.exception.stderr)
