"""
The client's chat logic, apart from any terminal: the UDP session with the
relay (hello until welcomed, keepalives, splitting, notices) and the lobby.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer, task
from twisted.internet.protocol import DatagramProtocol

from ocm import wire
from ocm.sealing import OVERHEAD, Channel
from ocm.client import render
from ocm.client.tunnel import TunnelRefused

# Exit codes of python -m ocm.client (documented in the README).
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3
EXIT_CLOSED = 4
EXIT_DISCONNECTED = 5
#: The server stopped answering (no pong, nothing else) and the one rejoin failed: the same 5 as a disconnection.
EXIT_SERVER_GONE = 5
EXIT_NO_UDP = 6

#: Seconds /ping waits for its pong before saying none came.
PING_WAIT = 3.0
#: The least time a ping may go unanswered (nothing else heard) before the server counts as gone.
MIN_ANSWER_WAIT = 2.0
#: A line sent when nothing was heard for this long is followed by a ping (a dead server shows sooner).
QUIET_BEFORE_LINE = 1.0
#: Pings sent after the welcome to learn whether the server answers them (SPEC section 7) at all.
PROBES = 3

Address = tuple[str, int]
Output = Callable[[str], None]


@dataclass
class Ending:
    """How a session ended: the exit code, what to say, and whether a rejoin may help."""

    code: int
    message: str = ""
    rejoinable: bool = False
    #: The server stopped answering: no pong to the pings, nothing else heard.
    gone: bool = False
    #: Typed lines not known to have reached the room (sent since the server was last heard, or still waiting for the welcome).
    unsent: list[str] = field(default_factory=list)


def parse_command(text: str) -> tuple[str, str] | None:
    """
    C{(name, rest)} if C{text} is a command: spaces stripped, C{/} and a
    letter (the name is case-insensitive; C{rest} is what follows it, its
    inner spaces kept); None for chat.
    """
    stripped = text.strip()
    if stripped[:1] != "/" or not stripped[1:2].isalpha():
        return None
    word, *rest = stripped[1:].split(None, 1)
    return word.lower(), rest[0] if rest else ""


class _Session(DatagramProtocol):
    """What the room session and the lobby session share."""

    #: The commands this session understands (L{render.COMMANDS} names).
    commands: list[str] = render.LOBBY_COMMANDS

    def __init__(self, clock: Any, server: Address, out: Output, keepalive: float) -> None:
        self.clock = clock
        self.server = server
        self.out = out
        self.keepalive_interval = keepalive
        self.ended: defer.Deferred[Ending] = defer.Deferred()
        self.last_sent = 0.0
        self._keepalive: task.LoopingCall | None = None
        self._leave_when_ready = False

    def _send(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data, self.server)  # type: ignore[call-arg]
            self.last_sent = self.clock.seconds()

    def _start_keepalive(self) -> None:
        self._keepalive = task.LoopingCall(self._maybe_keepalive)
        self._keepalive.clock = self.clock
        self._keepalive.start(self.keepalive_interval / 4, now=False)

    def _maybe_keepalive(self) -> None:
        if self.clock.seconds() - self.last_sent >= self.keepalive_interval:
            self.send_keepalive()

    def send_keepalive(self) -> None:
        """One empty-message datagram."""
        raise NotImplementedError

    def end(self, ending: Ending) -> None:
        """Stop the timers and report how the session ended (once)."""
        if self._keepalive is not None and self._keepalive.running:
            self._keepalive.stop()
        if not self.ended.called:
            self.ended.callback(ending)

    def line(self, text: str) -> None:
        """
        One line of input: a command if it starts with C{/} and a letter
        (never sent as chat, even unknown), else a message, sent as typed.
        """
        parsed = parse_command(text)
        if parsed is not None:
            self.command(*parsed)
        elif text:
            self.say(text)

    def command(self, name: str, rest: str) -> None:
        """Run C{/name rest}; an unknown command is said to be so, one of the room's elsewhere unavailable."""
        if name in ("leave", "quit"):
            self.leave()
        elif name == "help":
            for line in self.help():
                self.out(line)
        elif name == "who" and "who" in self.commands:
            self.who()
        elif name in render.COMMAND:
            self.out(f"* /{name} is not available here")
        else:
            self.out(render.unknown_command(name, self.commands))

    def help(self) -> list[str]:
        """The /help lines."""
        return render.help_lines(self.commands)

    def known_members(self) -> list[str]:
        """The other members, as far as the notices told (none in the lobby)."""
        return []

    def completions(self, text: str) -> list[tuple[str, int]]:
        """
        Tab completion of the line typed so far, C{text}: a command's name
        after C{/}, a member's name where a command takes USER.  Each
        completion is (replacement, its start: a negative offset from the
        end of C{text}).
        """
        if not text.startswith("/"):
            return []
        head, space, arg = text[1:].partition(" ")
        if not space:
            word = head.lower()
            return [(f"/{name} ", -len(text)) for name in self.commands if name.startswith(word)]
        command = render.COMMAND.get(head.lower())
        if command is None or command.name not in self.commands or not command.arguments.startswith("USER"):
            return []
        if command.name == "msg" and " " in arg:
            return []  # past USER, in TEXT
        after = " " if command.name == "msg" else ""  # the TEXT follows
        return [(member + after, -len(arg)) for member in self.known_members() if member.startswith(arg)]

    def who(self) -> None:
        """Ask for the member list."""
        self.out("* /who is not available here")

    def say(self, text: str) -> None:
        """Send one message."""
        raise NotImplementedError

    def leave(self) -> None:
        """Leave and end the session."""
        raise NotImplementedError

    def leave_when_ready(self) -> None:
        """Leave once what was typed so far has been sent (end of input)."""
        self.leave()


class ChatSession(_Session):
    """
    One member's UDP session with the room relay.

    Sends C{\\x00hello} every C{hello_interval} until the welcome arrives
    (ending with L{EXIT_NO_UDP} after C{hello_timeout}); lines typed before
    then wait.  Keepalives go out every C{timeout}/3 of silence.

    Liveness (SPEC section 7): right after the welcome the session pings
    once (up to L{PROBES} times) to learn that the server answers pings; a
    server that never does (older than section 7) is never judged by its
    silence.  Then, when nothing has come from the server for C{timeout}/2,
    or a line goes out after a second of quiet, the session sends
    C{\\x00ping} (its C{pong} is not shown unless the user typed /ping).  A
    ping unanswered for max(C{timeout}/3, L{MIN_ANSWER_WAIT}) s, nothing
    else heard meanwhile and asked again every third of that, means the
    server stopped answering: the session ends with C{gone}, handing back
    the lines typed since the server was last heard (they may have vanished
    with it).
    """

    commands = [c.name for c in render.COMMANDS]

    def __init__(
        self,
        clock: Any,
        server: Address,
        room: str,
        name: str,
        token: bytes,
        timeout: float,
        out: Output,
        hello_timeout: float = 5.0,
        hello_interval: float = 0.5,
        key: bytes | None = None,
        tunnel: Callable[[], Awaitable[Any]] | None = None,
        tcp_only: bool = False,
        drop_udp: bool = False,
    ) -> None:
        super().__init__(clock, server, out, max(0.1, timeout / 3))
        self.room = room
        self.room_bytes = room.encode("utf-8")
        self.name = name
        self.token = token
        self.header = wire.encode_datagram(self.room_bytes, token)
        self.limit = wire.max_text(self.room_bytes, token, name.encode("utf-8"))
        #: Secure mode: every datagram sealed with this member's key (L{ocm.sealing}).
        self.channel = Channel(key, self.header, server_end=False) if key is not None else None
        if self.channel is not None:
            self.limit -= OVERHEAD
        self.hello_timeout = hello_timeout
        self.hello_interval = hello_interval
        #: Opens a TCP tunnel (L{ocm.client.tunnel}) where UDP gets no reply; None: no fallback.
        self.open_tunnel = tunnel
        self.tcp_only = tcp_only
        #: Test-only (C{OCM_CLIENT_DROP_UDP=1}): behave as if UDP were blocked.
        self.drop_udp = drop_udp
        self.tunnel: Any = None
        self.welcomed = False
        #: The room as the notices tell it: its members (in the order they came), host, topic, muted members.
        self.members: list[str] = []
        self.host: str | None = None
        self.topic = ""
        self.muted: set[str] = set()
        self._ping_sent: float | None = None
        self._ping_timer: Any = None
        #: The user's /ping went unanswered (said so): a late pong is still shown, once.
        self._late_pong = False
        #: Nothing heard from the server for this long: ping it.
        self.ping_after = max(0.1, timeout / 2)
        #: A ping unanswered this long, nothing else heard: the server is gone.
        self.answer_within = max(timeout / 3, MIN_ANSWER_WAIT)
        #: The server answered a ping: its silence means something.
        self.answers_pings = False
        self._probes = 0
        #: When the server was last heard from (any datagram that decodes).
        self.last_heard = 0.0
        #: When the first ping still unanswered went out (None: none is).
        self._asking_since: float | None = None
        self._asked_at = 0.0
        #: Lines sent since the server was last heard: unconfirmed, handed back if it is gone.
        self._unconfirmed: list[str] = []
        self._messages = 0
        self._waiting: list[str] = []
        self._hello: task.LoopingCall | None = None
        self._hello_deadline: Any = None

    def startProtocol(self) -> None:
        """Start saying hello (over UDP, or at once through TCP with C{tcp_only})."""
        if self.tcp_only and self.open_tunnel is not None:
            self._through_tcp("* chatting through TCP (--tcp-only)")
        else:
            self._say_hello()

    def _say_hello(self) -> None:
        self._hello = task.LoopingCall(self._message, wire.HELLO)
        self._hello.clock = self.clock
        self._hello.start(self.hello_interval)
        self._hello_deadline = self.clock.callLater(self.hello_timeout, self._no_reply)

    def _no_reply(self) -> None:
        if self.open_tunnel is not None and self.tunnel is None:
            self._stop_hello()
            self._through_tcp("* UDP blocked: chatting through TCP")
            return
        host, port = self.server
        how = "through the TCP tunnel" if self.tunnel is not None else "over UDP"
        self.end(Ending(EXIT_NO_UDP, f"no reply {how} from {host}:{port}; is UDP blocked?"))

    def _through_tcp(self, why: str) -> None:
        """Open the tunnel; say hello through it."""
        assert self.open_tunnel is not None
        self.out(why)

        def opened(tunnel: Any) -> None:
            if self.ended.called:
                tunnel.close()
                return
            self.tunnel = tunnel
            tunnel.deliver = self._received
            tunnel.closed.addCallback(self._tunnel_closed)
            self._say_hello()

        def failed(failure: Any) -> None:
            refused = failure.value if isinstance(failure.value, TunnelRefused) else None
            host, port = self.server
            if not self.tcp_only:  # UDP was tried first, and got no reply
                why = "the server does not offer a TCP tunnel" if refused and refused.no_tunnel else f"no TCP tunnel: {failure.getErrorMessage()}"
                self.end(Ending(EXIT_NO_UDP, f"no reply over UDP from {host}:{port}, and {why}; is UDP blocked?"))
            elif refused and refused.no_tunnel:
                self.end(Ending(EXIT_REFUSED, "the server does not offer a TCP tunnel (a server started with --tunnel does); chat without --tcp-only"))
            elif refused:
                self.end(Ending(EXIT_REFUSED, failure.getErrorMessage()))
            else:
                self.end(Ending(EXIT_ERROR, f"no TCP tunnel: {failure.getErrorMessage()}"))

        defer.ensureDeferred(self.open_tunnel()).addCallbacks(opened, failed)  # type: ignore[arg-type]

    def _tunnel_closed(self, _: Any) -> None:
        if not self.ended.called:
            unsent, self._unconfirmed = self._unconfirmed, []
            self.end(Ending(EXIT_DISCONNECTED, "* the server closed the TCP tunnel", rejoinable=True, unsent=unsent))

    def _send(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.send(data)
            self.last_sent = self.clock.seconds()
        elif self.drop_udp:
            self.last_sent = self.clock.seconds()
        else:
            super()._send(data)

    def _stop_hello(self) -> None:
        if self._hello is not None and self._hello.running:
            self._hello.stop()
        if self._hello_deadline is not None and self._hello_deadline.active():
            self._hello_deadline.cancel()

    def end(self, ending: Ending) -> None:
        """
        Stop every timer, close the tunnel, report the ending: with the
        lines still waiting for the welcome, unless it is a leave (which
        drops them on purpose).
        """
        if not self.ended.called and self._waiting and ending.code != EXIT_OK:
            ending.unsent = [*ending.unsent, *self._waiting]
            self._waiting = []
        self._stop_hello()
        if self._ping_timer is not None and self._ping_timer.active():
            self._ping_timer.cancel()
        super().end(ending)
        if self.tunnel is not None:
            self.tunnel.close()

    def _message(self, message: bytes) -> None:
        """One datagram to the relay: the header and C{message} (sealed, in secure mode)."""
        self._messages += 1
        if self.channel is not None:
            self._send(self.header + self.channel.seal(message))
        else:
            self._send(self.header + message)

    def send_keepalive(self) -> None:
        """An empty message: keeps the membership alive."""
        self._message(b"")

    def line(self, text: str) -> None:
        """
        One line of input.  Before the welcome, lines wait (in order, commands
        too), but /leave, /quit and /help, which act at once.
        """
        parsed = parse_command(text)
        if not self.welcomed and text and not (parsed and parsed[0] in ("leave", "quit", "help")):
            self._waiting.append(text)
            return
        before = self._messages
        super().line(text)
        # What reached the room (not /ping or /who, which only ask) stays
        # unconfirmed until the server is heard from again.
        if self._messages > before and not self.ended.called and not (parsed and parsed[0] in ("ping", "who")):
            self._unconfirmed.append(text)
            if self.answers_pings and self._asking_since is None and self.clock.seconds() - self.last_heard >= QUIET_BEFORE_LINE:
                self._ask()

    def say(self, text: str) -> None:
        """Send C{text}, split at character boundaries into datagrams that fit."""
        if not self.welcomed:
            self._waiting.append(text)
            return
        for piece in wire.split_text(text, self.limit):
            self._message(piece)

    def help(self) -> list[str]:
        """/help, saying whether this member is the host."""
        return render.help_lines(self.commands, host=self.host == self.name)

    def known_members(self) -> list[str]:
        """The other members of the room, as the notices told."""
        return [m for m in self.members if m != self.name]

    def command(self, name: str, rest: str) -> None:
        """The room's commands (SPEC sections 2 and 7): control datagrams, C{\\x00} and the words."""
        command = render.COMMAND.get(name)
        if command is None or name in ("leave", "quit", "help", "who"):
            super().command(name, rest)
        elif name == "ping":
            self.ping()
        elif name == "msg":
            self.private(rest)
        elif name == "topic":
            self._control("topic", rest)
        elif command.arguments == "USER":
            if not rest:
                self.out(render.usage_line(name))
                return
            self._control(name, rest)
        else:  # lock, unlock: no arguments
            self._control(name)

    def ping(self) -> None:
        """/ping: the pong says how long the server took, its absence after L{PING_WAIT} s is said too."""
        if self._ping_timer is not None and self._ping_timer.active():
            self._ping_timer.cancel()
        self._ping_sent = self.clock.seconds()
        self._late_pong = False
        self._ping_timer = self.clock.callLater(PING_WAIT, self._no_pong)
        self._ask()

    def _no_pong(self) -> None:
        self._ping_sent = None
        self._late_pong = True
        self.out(f"* no pong within {PING_WAIT:.0f} s (a server older than SPEC section 7 does not answer /ping)")

    def _ask(self) -> None:
        """C{\\x00ping}: is the server still there?  (The user's /ping or the session's own.)"""
        now = self.clock.seconds()
        self._asked_at = now
        if self._asking_since is None:
            self._asking_since = now
        self._control("ping")

    def _probe(self) -> None:
        """One of the pings that learn whether the server answers pings at all."""
        self._probes += 1
        self._ask()

    def _maybe_keepalive(self) -> None:
        """Every tick after the welcome: ping the server if it has been quiet, give it up if it stays so; keepalive."""
        now = self.clock.seconds()
        if not self.answers_pings:
            if self._probes < PROBES and now - self._asked_at >= self.answer_within / 3:
                self._probe()  # the probe or its pong may have been lost
        elif self._asking_since is not None:
            if now - self._asking_since >= self.answer_within:
                self._server_gone()
                return
            if now - self._asked_at >= self.answer_within / 3:
                self._ask()  # the ping or its pong may have been lost
        elif now - self.last_heard >= self.ping_after:
            self._ask()
        super()._maybe_keepalive()

    def _server_gone(self) -> None:
        """No pong and nothing else within the bound: a dead node, or a path that no longer carries us."""
        unsent, self._unconfirmed = self._unconfirmed, []
        self.end(Ending(EXIT_SERVER_GONE, render.SERVER_GONE, rejoinable=True, gone=True, unsent=unsent))

    def _heard(self) -> None:
        """Something came from the server: it is alive, and what was sent before reached it."""
        self.last_heard = self.clock.seconds()
        self._asking_since = None
        self._unconfirmed.clear()

    def _control(self, *words: str) -> None:
        """One control message: C{\\x00} and the words, one space apart (an empty last word: none)."""
        self._message(b"\x00" + " ".join(w for w in words if w).encode("utf-8"))

    def private(self, rest: str) -> None:
        """C{/msg USER TEXT}: to USER alone, split to fit as chat is."""
        target, _, text = rest.partition(" ")
        if not target or not text.strip():
            self.out(render.usage_line("msg"))
            return
        prefix = f"msg {target} ".encode("utf-8")
        room = self.limit - 1 - len(prefix)
        if room <= 0:
            self.out("* that name is too long for a private message")
            return
        for piece in wire.split_text(text, room):
            self._message(b"\x00" + prefix + piece)

    def who(self) -> None:
        """Ask the relay for the member list."""
        self._message(wire.WHO)

    def leave(self) -> None:
        """Tell the relay we leave; end with success (once: an ended session says nothing more)."""
        if self.ended.called:
            return
        self._message(wire.LEAVE)
        self.end(Ending(EXIT_OK))

    def leave_when_ready(self) -> None:
        """
        Leave once the server has confirmed what was typed: at once if
        nothing sent is unconfirmed, else once it is heard from after a ping
        (if it never is, the session ends as gone and the lines are handed
        back); before the welcome, after it and the waiting lines.
        """
        if self.welcomed and not (self._unconfirmed and self.answers_pings):
            self.leave()
            return
        self._leave_when_ready = True
        if self.welcomed and self._asking_since is None:
            self._ask()

    def datagramReceived(self, data: bytes, addr: Address) -> None:
        """A chat message or a notice from the relay, over UDP."""
        if addr[1] != self.server[1] or self.drop_udp:
            return
        self._received(data)

    def _received(self, data: bytes) -> None:
        """A datagram from the relay (over UDP or through the tunnel)."""
        if self.ended.called:
            return
        if self.channel is not None:
            opened, _ = self.channel.open(data)
            if opened is None:
                return  # forged, replayed or plain: not from the relay
            data = opened
        try:
            sender, message = wire.decode_relayed(data)
            chat = render.chat_line(sender.decode("utf-8"), message.decode("utf-8")) if sender else None
            notice = None if sender else wire.decode_notice(message)
        except (wire.WireError, UnicodeDecodeError):
            return
        self._heard()
        if notice is not None:
            self._notice(notice)
        elif chat is not None:
            self.out(chat)
        if self._leave_when_ready and self.welcomed and not self._unconfirmed and not self.ended.called:
            self.leave()  # end of input, and now the server has confirmed the last lines

    def _notice(self, notice: dict[str, Any]) -> None:
        event = notice["event"]
        if event == "welcome":
            if not self.welcomed:
                self.welcomed = True
                self._stop_hello()
                self._start_keepalive()
                self._roster(notice)
                self.out(render.notice_line(notice, self.name))
                if self.topic:
                    self.out(render.topic_line(self.topic))
                waiting, self._waiting = self._waiting, []
                for text in waiting:
                    self.line(text)
                self._probe()
                if self._leave_when_ready:
                    self.leave_when_ready()
            return
        if event == "closed":
            # Leaving at end of input, waiting for the server to confirm the
            # last lines: it just did, and the room is gone; a leave all the same.
            self.end(Ending(EXIT_OK if self._leave_when_ready else EXIT_CLOSED, render.notice_line(notice)))
        elif event == "disconnected":
            # Kicked or banned: out for good (SPEC section 7), no joining again by ourselves.
            rejoinable = notice.get("reason") not in ("kicked", "banned")
            self.end(Ending(EXIT_DISCONNECTED, render.notice_line(notice), rejoinable=rejoinable))
        elif event == "pong":
            self.answers_pings = True
            # Only the user's /ping is answered aloud; the session's own pings are silent.
            if self._ping_sent is not None:
                took = (self.clock.seconds() - self._ping_sent) * 1000
                self._ping_sent = None
                if self._ping_timer is not None and self._ping_timer.active():
                    self._ping_timer.cancel()
                self.out(f"* pong: the server answered in {took:.0f} ms")
            elif self._late_pong:
                self._late_pong = False
                self.out(render.notice_line(notice, self.name))
        else:
            self._roster(notice)
            self.out(render.notice_line(notice, self.name))
            if event == "members" and notice.get("topic"):
                self.out(render.topic_line(notice.get("topic")))

    def _roster(self, notice: dict[str, Any]) -> None:
        """Keep track of the room (members, host, topic, muted) from a notice."""
        event = notice["event"]
        user = notice.get("user")
        if event in ("welcome", "members"):
            members = notice.get("members")
            if isinstance(members, list):
                self.members = [str(m) for m in members]
            if isinstance(notice.get("host"), str):
                self.host = notice["host"]
            if event == "members" or "topic" in notice:
                self.topic = str(notice.get("topic") or "")
            if isinstance(notice.get("muted"), list):
                self.muted = {str(m) for m in notice["muted"]}
        elif not isinstance(user, str):
            return
        elif event == "join" and user not in self.members:
            self.members.append(user)
        elif event == "leave":
            if user in self.members:
                self.members.remove(user)
            self.muted.discard(user)
        elif event == "host":
            self.host = user
        elif event == "topic":
            self.topic = str(notice.get("topic") or "")
        elif event == "muted":
            self.muted.add(user)
        elif event == "unmuted":
            self.muted.discard(user)


class LobbySession(_Session):
    """A client of the stage-1 open lobby: no rooms, no tokens, no welcome."""

    def __init__(self, clock: Any, server: Address, name: str, out: Output, timeout: float = 30.0) -> None:
        super().__init__(clock, server, out, max(0.1, timeout / 3))
        self.prefix = wire.sender_prefix(name.encode("utf-8"))
        self.limit = wire.MAX_DATAGRAM - len(self.prefix)

    def startProtocol(self) -> None:
        """Make ourselves heard (a keepalive) and keep it up."""
        self.send_keepalive()
        self._start_keepalive()
        host, port = self.server
        self.out(f"* in the lobby at {host}:{port}")

    def send_keepalive(self) -> None:
        """An empty message."""
        self._send(self.prefix)

    def say(self, text: str) -> None:
        """Send C{text}, split to fit."""
        for piece in wire.split_text(text, self.limit):
            self._send(self.prefix + piece)

    def leave(self) -> None:
        """The lobby has no leave message: just stop."""
        self.end(Ending(EXIT_OK))

    def datagramReceived(self, data: bytes, addr: Address) -> None:
        """Someone in the lobby said something."""
        try:
            sender, message = wire.decode_relayed(data, wire.MAX_DATAGRAM)
            self.out(render.chat_line(sender.decode("utf-8"), message.decode("utf-8")))
        except (wire.WireError, UnicodeDecodeError):
            return
