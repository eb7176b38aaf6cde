"""
The real thing: C{twistd --pidfile= -n ocm} in a subprocess, talked to over
loopback, stopped with SIGTERM.
"""

from __future__ import annotations

import signal
import socket

from twisted.internet import error
from twisted.trial import unittest

from ocm import wire
from tests.helpers import TwistdProcess, free_port, listen_udp, sleep, spawn_twistd, status_of, tcrp, wait_until


class TwistdTests(unittest.TestCase):
    """The plugin as an operator runs it."""

    timeout = 60

    def spawn(self, *args: str) -> TwistdProcess:
        return self.spawn_raw("-n", "ocm", *args)

    def spawn_raw(self, *args: str) -> TwistdProcess:
        proc = spawn_twistd(self, *args)
        self.proc_transport = proc.transport
        return proc

    async def test_serve_and_stop(self) -> None:
        """twistd -n ocm serves rooms; SIGTERM sends closed/shutdown before exiting."""
        tcp, udp = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_DGRAM)
        proc = self.spawn("--tcp", str(tcp), "--udp", str(udp), "--interface", "127.0.0.1")

        async def ready() -> list[wire.Frame] | None:
            try:
                return await tcrp(tcp, 1, "r", {"username": "alice"})
            except (error.ConnectError, ConnectionError):
                return None

        frames = None
        for _ in range(200):
            frames = await ready()
            if frames:
                break
            await sleep(0.05)
        self.assertTrue(frames, proc.output)
        assert frames is not None
        self.assertEqual(status_of(frames), {"status": 200, "udp_port": udp, "timeout": 30})
        peer, port = listen_udp()
        self.addCleanup(port.stopListening)
        port.write(wire.encode_datagram(b"r", frames[1].payload, wire.HELLO), ("127.0.0.1", udp))
        await wait_until(lambda: peer.notices("welcome"), what="welcome")
        self.proc_transport.signalProcess(signal.SIGTERM)
        await wait_until(lambda: peer.notices("closed"), what="shutdown notice")
        self.assertEqual(peer.notices("closed"), [{"event": "closed", "reason": "shutdown"}])
        reason = await proc.ended
        # Recent twistd re-raises the signal after a clean shutdown.
        self.assertIn(getattr(reason, "signal", None) or getattr(reason, "exitCode", None), (signal.SIGTERM, 0), proc.output.decode())
        self.assertIn(b"Server Shut Down.", proc.output)
        self.assertIn(b"room r created", proc.output)
        self.assertIn(b"room r closed (shutdown)", proc.output)
        self.assertNotIn(b"Traceback", proc.output)

    async def test_json_logs(self) -> None:
        """--logger=ocm.logs.json_lines: one JSON object a line, with the event's fields; no token."""
        import json

        tcp = free_port(socket.SOCK_STREAM)
        proc = self.spawn_raw("--logger=ocm.logs.json_lines", "-n", "ocm", "--tcp", str(tcp), "--udp", "0", "--interface", "127.0.0.1")
        frames = None
        for _ in range(200):
            try:
                frames = await tcrp(tcp, 1, "ルーム", {"username": "alice", "password": "hunter2"})
                break
            except (error.ConnectError, ConnectionError):
                await sleep(0.05)
        assert frames is not None
        await tcrp(tcp, 2, "ルーム", {"username": "bob", "password": "wrong"})
        await wait_until(lambda: b"refused" in proc.output, what="the refusal logged")
        self.proc_transport.signalProcess(signal.SIGTERM)
        await proc.ended
        records = [json.loads(line) for line in proc.output.decode().splitlines() if line.strip()]
        created = [r for r in records if r.get("log_format", "").startswith("room {room} created")]
        self.assertEqual([(r["room"], r["user"]) for r in created], [("ルーム", "alice")])
        refused = [r for r in records if "refused" in r.get("log_format", "")]
        self.assertEqual([r["status"] for r in refused], [401])
        self.assertNotIn(b"hunter2", proc.output)
        self.assertNotIn(frames[1].payload, proc.output)

    async def test_busy_port_fails_loudly(self) -> None:
        """A TCP port in use: twistd exits non-zero and says why."""
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            proc = self.spawn("--tcp", str(busy.getsockname()[1]), "--udp", "0", "--interface", "127.0.0.1")
            reason = await proc.ended
        self.assertIsInstance(reason, error.ProcessTerminated)
        self.assertIn(b"Address already in use", proc.output)

    async def test_bad_option(self) -> None:
        """A bad value gives a usage message, not a traceback."""
        proc = self.spawn("--timeout", "-1")
        reason = await proc.ended
        from twisted import version

        if (version.major, version.minor) >= (26, 10):
            # Older twistd prints the usage error and exits 0 (as on PyPy 3.9,
            # whose newest Twisted is 26.4).
            self.assertIsInstance(reason, error.ProcessTerminated)
        self.assertIn(b"is not a positive number", proc.output)
        self.assertIn(b"timeout", proc.output)
        self.assertNotIn(b"Traceback", proc.output)


class TwistdExtensions(unittest.TestCase):
    """The extensions as an operator starts them: secure mode, tunnels, history, in one real twistd."""

    timeout = 60

    async def test_secure_tunnel_history(self) -> None:
        import os

        from ocm.client.requests import request
        from ocm.client.tunnel import open_tunnel
        from ocm.sealing import Channel
        from ocm.tls import client_tls
        from tests.certs import write_server_files

        files = write_server_files(os.path.abspath(self.mktemp()))
        tcp, udp = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_DGRAM)
        proc = spawn_twistd(
            self, "-n", "ocm", "--tcp", str(tcp), "--udp", str(udp), "--interface", "127.0.0.1",
            "--tls-cert", files["server.pem"], "--tls-key", files["server.key"], "--tunnel", "--max-history", "5",
        )
        tls = client_tls("127.0.0.1", files["ca.pem"])
        from twisted.internet import reactor

        reply = None
        for _ in range(200):
            try:
                reply = await request(reactor, "127.0.0.1", tcp, wire.OP_CREATE, "r", {"username": "host", "history": 2}, tls=tls)
                break
            except Exception:
                await sleep(0.05)
        self.assertIsNotNone(reply, proc.output)
        assert reply is not None and reply.complete is not None
        self.assertEqual((reply.status, reply.fields["udp_port"], reply.fields["seal"]), (200, udp, "chacha20-poly1305"))
        header = wire.encode_datagram(b"r", reply.complete)
        channel = Channel(bytes.fromhex(reply.fields["key"]), header, server_end=False)
        tunnel = await open_tunnel(reactor, "127.0.0.1", tcp, "r", reply.complete, tls)
        self.addCleanup(tunnel.close)
        got: list[bytes] = []
        tunnel.deliver = got.append
        tunnel.send(header + channel.seal(wire.HELLO))
        await wait_until(lambda: got, what="the welcome through the TLS tunnel")
        plain, why = channel.open(got[0])
        assert plain is not None, why
        self.assertEqual(wire.decode_notice(wire.decode_relayed(plain)[1])["event"], "welcome")
        tunnel.send(header + wire.WHO)  # unsealed: dropped, never answered
        tunnel.send(header + channel.seal(wire.WHO))  # sealed: answered, after anything the first one got
        await wait_until(lambda: len(got) >= 2, what="the answer to the sealed who")
        self.assertEqual(len(got), 2)
        plain, why = channel.open(got[1])
        assert plain is not None, why
        self.assertEqual(wire.decode_notice(wire.decode_relayed(plain)[1])["event"], "members")
        tunnel.close()
        await tunnel.closed
