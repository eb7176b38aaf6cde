"""Tests for L{ocm.tap}: options, the service tree, the plugin."""

from __future__ import annotations

from twisted.application import internet
from twisted.application.service import IServiceMaker
from twisted.internet.task import Clock
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial import unittest

from ocm.tap import GuardedCall, Options, makeService, sweep_interval
from ocm.relay.port import FastUDPServer


class OptionsTests(unittest.TestCase):
    """Parsing C{twistd ocm} options."""

    def parse(self, *args: str) -> Options:
        options = Options()
        options.parseOptions(list(args))
        return options

    def test_defaults(self) -> None:
        """TCP 9000, UDP 9001, all interfaces, 30 s, no lobby, 64 KiB."""
        o = self.parse()
        self.assertEqual(
            (o["tcp"], o["udp"], o["interface"], o["timeout"], o["lobby"], o["max-payload"]),
            (9000, 9001, "", 30.0, None, 65536),
        )
        self.assertTrue(o["max-rooms"] > 0 and o["max-members"] > 0)

    def test_values(self) -> None:
        """Every option is parsed and coerced."""
        o = self.parse("--tcp", "1", "--udp", "2", "--interface", "::", "--timeout", "1.5", "--lobby", "3", "--max-payload", "10", "--max-rooms", "4", "--max-members", "5")
        self.assertEqual(
            (o["tcp"], o["udp"], o["interface"], o["timeout"], o["lobby"], o["max-payload"], o["max-rooms"], o["max-members"]),
            (1, 2, "::", 1.5, 3, 10, 4, 5),
        )

    def test_bad_values(self) -> None:
        """Bad values are usage errors, not tracebacks."""
        for args in (["--tcp", "70000"], ["--udp", "x"], ["--timeout", "-1"], ["--timeout", "0"], ["--timeout", "nan"], ["--max-rooms", "0"], ["--lobby", "-5"], ["--udp", "5", "--lobby", "5"]):
            self.assertRaises(usage.UsageError, self.parse, *args)

    def test_help_documents_every_option(self) -> None:
        """Each option appears in --help with its text."""
        text = str(Options())
        for name in ("tcp", "udp", "interface", "timeout", "lobby", "max-payload", "max-rooms", "max-members"):
            self.assertIn(f"--{name}=", text)


class ServiceTests(unittest.TestCase):
    """makeService's tree."""

    def test_order(self) -> None:
        """UDP, TCP, the timer, then the shutdown notices (stopped in reverse)."""
        options = Options()
        options.parseOptions(["--tcp", "0", "--udp", "0"])
        top = makeService(options, Clock())
        kinds = [type(s) for s in top]
        self.assertEqual(kinds[:3], [FastUDPServer, internet.TCPServer, internet.TimerService])
        self.assertTrue(issubclass(FastUDPServer, internet.UDPServer))
        self.assertEqual(type(list(top)[-1]).__name__, "ShutdownNotices")
        timer = top.getServiceNamed("sweep")
        self.assertEqual(timer.step, 1.0)  # type: ignore[attr-defined]

    def test_lobby(self) -> None:
        """--lobby adds a UDP service."""
        options = Options()
        options.parseOptions(["--lobby", "0"])
        top = makeService(options, Clock())
        self.assertIsInstance(top.getServiceNamed("lobby"), internet.UDPServer)

    def test_sweep_interval(self) -> None:
        """At most a second, and a quarter of short timeouts."""
        self.assertEqual(sweep_interval(30), 1.0)
        self.assertEqual(sweep_interval(0.4), 0.1)

    def test_guarded(self) -> None:
        """One failure of the sweep is logged; the timer lives on."""
        calls = []

        def broken() -> None:
            calls.append(1)
            raise RuntimeError("boom")

        guarded = GuardedCall(broken, "test")
        guarded()
        guarded()
        self.assertEqual(len(calls), 2)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)

    def test_plugin(self) -> None:
        """getPlugins(IServiceMaker) finds ocm."""
        makers = {m.tapname: m for m in getPlugins(IServiceMaker)}
        self.assertIn("ocm", makers)
        self.assertIs(makers["ocm"].options, Options)
