"""
The client as people and programs run it: C{python -m ocm.client} in
subprocesses with piped stdin (and one in a pseudo-terminal), against a real
server on 127.0.0.1.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import defer, error, protocol, reactor

from ocm.client.session import EXIT_CLOSED, EXIT_OK, EXIT_REFUSED
from tests.helpers import sleep, wait_until
from tests.helpers import ServerCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ClientProcess(protocol.ProcessProtocol):
    """A client subprocess: write lines to it, read its output lines."""

    def __init__(self) -> None:
        self.out = b""
        self.err = b""
        self.ended: defer.Deferred[int] = defer.Deferred()

    @property
    def lines(self) -> list[str]:
        return self.out.decode("utf-8", "replace").splitlines()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def send(self, line: str) -> None:
        self.transport.write(line.encode("utf-8") + b"\n")  # type: ignore[union-attr]

    def close_stdin(self) -> None:
        self.transport.closeStdin()  # type: ignore[union-attr]

    def processEnded(self, reason: Any) -> None:
        value = reason.value
        self.ended.callback(value.exitCode if isinstance(value, (error.ProcessDone, error.ProcessTerminated)) else -1)

    def has(self, text: str) -> bool:
        return any(text in line for line in self.lines)


def spawn_client(case: Any, tcp_port: int, *args: str, env: dict[str, str] | None = None) -> ClientProcess:
    """C{python -m ocm.client --port TCP_PORT ARGS}, killed at the end of C{case} if still running."""
    proc = ClientProcess()
    argv = [sys.executable, "-m", "ocm.client", "--port", str(tcp_port), *args]
    environ = {k: v for k, v in os.environ.items() if k != "OCM_PASSWORD"}
    environ.update(env or {})
    transport = reactor.spawnProcess(proc, sys.executable, argv, env=environ, path=ROOT)  # type: ignore[attr-defined]

    def kill() -> Any:
        if not proc.ended.called:
            transport.signalProcess("KILL")
            return proc.ended
        return None

    case.addCleanup(kill)
    return proc


async def answer(child: Any, expect: Callable[[str], Awaitable[None]], *steps: tuple[str, str]) -> None:
    """Answer the interactive client's prompts in order: each (prompt, typed line)."""
    for prompt, line in steps:
        await expect(prompt)
        child.sendline(line)


class ClientCase(ServerCase):
    """A server, and clients spawned against it."""

    timeout = 60

    def client(self, *args: str, env: dict[str, str] | None = None) -> ClientProcess:
        return spawn_client(self, self.tcp_port, *args, env=env)

    async def ended(self, proc: ClientProcess, timeout: float = 10) -> int:
        await wait_until(lambda: proc.ended.called, timeout, "client exit")
        return await proc.ended

    async def joined(self, proc: ClientProcess) -> None:
        await wait_until(lambda: proc.has("* joined room"), 10, f"welcome: {proc.out!r} {proc.err!r}")

    def pty_client(self, *args: str) -> tuple[Any, Callable[[str], Awaitable[None]]]:
        """The interactive client in a pseudo-terminal, and a bounded, reactor-friendly expect."""
        import pexpect

        child = pexpect.spawn(
            sys.executable,
            ["-m", "ocm.client", "--port", str(self.tcp_port), *args],
            cwd=ROOT,
            env={**os.environ, "TERM": "xterm", "PROMPT_TOOLKIT_NO_CPR": "1"},
            encoding="utf-8",
            timeout=10,
            dimensions=(24, 100),
        )
        self.addCleanup(child.terminate, True)

        async def expect(pattern: str) -> None:
            # pexpect blocks; poll it without blocking the reactor for long.
            for _ in range(200):
                try:
                    child.expect(pattern, timeout=0.05)
                    return
                except pexpect.TIMEOUT:
                    await sleep(0.01)
            raise AssertionError(f"never saw {pattern!r}; got {child.before!r}")

        return child, expect


class ScriptedTests(ClientCase):
    """Scripted clients: flags, piped stdin, plain output."""

    async def test_chat_both_ways(self) -> None:
        """Create, join, chat both ways in Japanese, /who, /leave; both exit 0."""
        alice = self.client("--name", "アリス", "--create", "部屋", env={"OCM_PASSWORD": "秘密"})
        await self.joined(alice)
        bob = self.client("--name", "ボブ", "--join", "部屋", env={"OCM_PASSWORD": "秘密"})
        await self.joined(bob)
        await wait_until(lambda: alice.has("* ボブ joined"))
        alice.send("こんにちは、ボブ")
        await wait_until(lambda: any(line.endswith(" アリス: こんにちは、ボブ") for line in bob.lines))
        bob.send("やあ、アリス 🌸")
        await wait_until(lambda: any(line.endswith(" ボブ: やあ、アリス 🌸") for line in alice.lines))
        bob.send("/who")
        await wait_until(lambda: bob.has("* members: アリス, ボブ (host: アリス)"))
        bob.send("/leave")
        self.assertEqual(await self.ended(bob), EXIT_OK)
        await wait_until(lambda: alice.has("* ボブ left"))
        alice.close_stdin()
        self.assertEqual(await self.ended(alice), EXIT_OK)
        self.assertFalse(any("\x1b" in line for line in alice.lines + bob.lines), "no escape codes")
        self.assertEqual(self.rooms.rooms, {})

    async def test_long_line(self) -> None:
        """A 9,000-character line arrives whole, in order, as consecutive messages."""
        alice = self.client("--name", "alice", "--create", "r")
        await self.joined(alice)
        bob = self.client("--name", "bob", "--join", "r")
        await self.joined(bob)
        text = "".join(chr(0x3042 + i % 80) for i in range(9000))
        alice.send(text)
        prefix_len = len("HH:MM alice: ")

        def received() -> str:
            return "".join(line[prefix_len:] for line in bob.lines if line[5:13] == " alice: ")

        await wait_until(lambda: len(received()) >= 9000, 10, "the long line")
        self.assertEqual(received(), text)
        alice.close_stdin()
        bob.close_stdin()
        await self.ended(alice)

    async def test_wrong_password(self) -> None:
        """A refusal prints the reason and exits non-zero."""
        alice = self.client("--name", "alice", "--create", "r", "--password", "right")
        await self.joined(alice)
        bob = self.client("--name", "bob", "--join", "r", "--password", "wrong")
        self.assertEqual(await self.ended(bob), EXIT_REFUSED)
        self.assertEqual(bob.lines, ["error: wrong password"])
        carol = self.client("--name", "carol", "--join", "r")
        self.assertEqual(await self.ended(carol), EXIT_REFUSED)
        self.assertEqual(carol.lines, ["error: room 'r' needs a password"])
        dave = self.client("--name", "dave", "--join", "nowhere")
        self.assertEqual(await self.ended(dave), EXIT_REFUSED)
        self.assertEqual(dave.lines, ["error: no room named 'nowhere'"])

    async def test_list(self) -> None:
        """--list prints the rooms and exits 0."""
        alice = self.client("--name", "alice", "--create", "r", "--capacity", "4", "--password-file", self.password_file("pw"))
        await self.joined(alice)
        lister = self.client("--list")
        self.assertEqual(await self.ended(lister), EXIT_OK)
        self.assertEqual(lister.lines, ["r  1/4 members (password)"])

    def password_file(self, password: str) -> str:
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write(password + "\n")
        return os.path.abspath(path)

    async def test_host_leaves(self) -> None:
        """The host leaving ends the others with a message and EXIT_CLOSED."""
        alice = self.client("--name", "alice", "--create", "r")
        await self.joined(alice)
        bob = self.client("--name", "bob", "--join", "r")
        await self.joined(bob)
        alice.send("/leave")
        self.assertEqual(await self.ended(bob), EXIT_CLOSED)
        self.assertEqual(bob.lines[-1], "* room closed: the host left")
        self.assertEqual(await self.ended(alice), EXIT_OK)

    async def test_interrupt_leaves(self) -> None:
        """Ctrl-C (SIGINT) on a scripted client sends \\x00leave before it exits."""
        alice = self.client("--name", "alice", "--create", "r")
        await self.joined(alice)
        bob = self.client("--name", "bob", "--join", "r")
        await self.joined(bob)
        bob.transport.signalProcess("INT")  # type: ignore[union-attr]
        await wait_until(lambda: alice.has("* bob left"), 5, "bob's leave")
        await self.ended(bob)
        alice.close_stdin()

    async def test_rejoin(self) -> None:
        """Disconnected by the server: joins again by itself with the same name."""
        alice = self.client("--name", "alice", "--create", "r")
        await self.joined(alice)
        bob = self.client("--name", "bob", "--join", "r")
        await self.joined(bob)
        member = self.rooms.find("r").members["bob"]
        self.service.relay.send_all(self.rooms.remove(member, "timeout"))  # type: ignore[attr-defined]
        await wait_until(lambda: bob.has("* joining again..."))
        await wait_until(lambda: len([line for line in bob.lines if "* joined room" in line]) == 2)
        self.assertIn("* disconnected by the server (you were silent too long)", bob.lines)
        bob.send("back again")
        await wait_until(lambda: any(line.endswith("bob: back again") for line in alice.lines))
        alice.close_stdin()
        await self.ended(bob)

    async def test_lobby(self) -> None:
        """--lobby: stage-1 chat."""
        one = self.client("--name", "one", "--lobby", str(self.lobby_port))
        two = self.client("--name", "two", "--lobby", str(self.lobby_port))
        await wait_until(lambda: len(self.service.lobby.clients) == 2, 10)  # type: ignore[attr-defined]
        one.send("hello lobby")
        await wait_until(lambda: any(line.endswith(" one: hello lobby") for line in two.lines))
        one.close_stdin()
        two.close_stdin()
        self.assertEqual(await self.ended(one), EXIT_OK)
        self.assertEqual(await self.ended(two), EXIT_OK)


class InteractiveTests(ClientCase):
    """The interactive client in a pseudo-terminal."""

    async def test_join_protected_room_types_in_clear(self) -> None:
        """
        A member who joins a password-protected room: the password is typed
        without echo (not even asterisks), then the chat line echoes in clear
        and the sent line stays readable above.
        """
        host = self.client("--name", "host", "--create", "秘密の部屋", env={"OCM_PASSWORD": "合言葉"})
        await self.joined(host)
        child, expect = self.pty_client()
        await answer(child, expect, ("server", ""), ("your name", "ゲスト"), ("create, join or list", "j"), ("room name", "秘密の部屋"))
        await expect("password")
        child.send("合言葉")
        child.sendline("")
        await expect("joined room")
        self.assertNotIn("合言葉", child.before or "")  # not echoed
        self.assertNotIn("***", child.before or "")  # nor masked
        child.send("こんにちは")
        await expect("こんにちは")  # echoed as typed, in clear
        child.sendline("")
        await wait_until(lambda: any(line.endswith("ゲスト: こんにちは") for line in host.lines), 10, "the chat line")
        child.send("二行目")
        await expect("二行目")
        self.assertNotIn("*****", child.before or "")
        await sleep(0.5)  # the next prompt up (raw mode) before the ^D
        child.sendcontrol("d")
        host.close_stdin()

    async def test_prompts_and_half_typed_line(self) -> None:
        """Prompts for what is missing; an incoming message leaves the half-typed line intact."""
        child, expect = self.pty_client()
        await answer(
            child, expect, ("server", ""), ("your name", "ぼく"), ("create, join or list", "c"), ("room name", "部屋"), ("password", ""), ("capacity", "")
        )
        await expect("joined room")
        child.send("半分だけ")  # typed, not sent
        await sleep(0.3)
        guest = self.client("--name", "guest", "--join", "部屋")
        await self.joined(guest)
        guest.send("割り込み")
        await expect("guest: 割り込み")
        child.sendline("です")
        await wait_until(lambda: any(line.endswith("ぼく: 半分だけです") for line in guest.lines), 10, "the whole line")
        await sleep(0.5)  # the next prompt up (raw mode) before the ^D
        child.sendcontrol("d")
        await wait_until(lambda: guest.has("* room closed: the host left"), 10)
