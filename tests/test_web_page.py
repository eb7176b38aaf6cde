"""
The browser chat page (C{ocm/web/static}, SPEC.md section 8) as people use
it: a real Chromium driven by Playwright's sync API, against a real
C{twistd --pidfile= -n ocm --web PORT} in a subprocess, with a plain UDP
member (TCRP over TCP, then datagrams) in the same rooms. C{WithFakeGateway}
runs the page against a stand-in for the gateway instead (Playwright's
WebSocket routing, no server), for what today's server cannot show: the
section 7 notices and the page's exact bytes.

Playwright's sync API will not run inside a running asyncio loop, so these
are plain synchronous trial tests: the server is a subprocess, every wait is
bounded (10 s at most). Without Playwright or C{/usr/bin/chromium} the
browser tests are skipped, unless C{CI=true}, where they fail instead.
Playwright brings no browser here (never C{playwright install}): it drives
Debian's Chromium.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from html.parser import HTMLParser
from typing import Any, Callable

from twisted.trial import unittest

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    expect = sync_playwright = None  # type: ignore[assignment]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless=new",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
#: Every wait of these tests, in seconds.
WAIT = 10.0
WAIT_MS = int(WAIT * 1000)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STATIC = os.path.join(REPO, "ocm", "web", "static")


def missing(case: unittest.TestCase, why: str) -> None:
    """Skip for C{why}; under C{CI=true}, fail instead."""
    if os.environ.get("CI") == "true":
        case.fail(f"{why} (CI=true: this test must run)")
    raise unittest.SkipTest(why)


def free_port(kind: int) -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """C{twistd -n ocm --tcp --udp --web} in a subprocess, stopped at the end of the test."""

    def __init__(self, case: unittest.TestCase) -> None:
        self.tcp = free_port(socket.SOCK_STREAM)
        self.udp = free_port(socket.SOCK_DGRAM)
        self.web = free_port(socket.SOCK_STREAM)
        self.url = f"http://127.0.0.1:{self.web}/"
        # A fresh directory: twistd runs the installed ocm, as an operator's would.
        self.dir = tempfile.mkdtemp(prefix="ocm-web-")
        case.addCleanup(shutil.rmtree, self.dir, True)
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        if os.path.exists(twistd):
            argv = [twistd]
        else:  # e.g. pip install --user: the script is elsewhere; same entry point
            argv = [sys.executable, "-c", "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"]
        argv += ["--pidfile=", "-n", "ocm", "--tcp", str(self.tcp), "--udp", str(self.udp), "--web", str(self.web), "--interface", "127.0.0.1", "--max-history", "20"]
        self.log_path = os.path.join(self.dir, "twistd.log")
        self.log = open(self.log_path, "wb")  # closed in stop()
        self.proc = subprocess.Popen(argv, cwd=self.dir, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        case.addCleanup(self.stop)
        self.case = case
        self.wait_ready()

    def output(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def wait_ready(self) -> None:
        """Until the page answers at /, 10 s at most."""
        deadline = time.monotonic() + WAIT
        while True:
            if self.proc.poll() is not None:
                self.case.fail(f"twistd exited ({self.proc.returncode}) before serving the page:\n{self.output()}")
            try:
                with urllib.request.urlopen(self.url, timeout=1) as response:
                    if response.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                self.case.fail(f"no page at {self.url} within {WAIT} s:\n{self.output()}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


def tcrp(port: int, operation: int, room: str, payload: dict[str, Any]) -> list[tuple[int, int, bytes]]:
    """One TCRP request over TCP: the (operation, state, payload) of each frame of the answer."""
    name = room.encode()
    body = json.dumps(payload).encode()
    request = bytes([len(name), operation, 0]) + len(body).to_bytes(29, "big") + name + body
    data = b""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as s:
        s.sendall(request)
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    frames = []
    while data:
        size = int.from_bytes(data[3:32], "big")
        start = 32 + data[0]
        frames.append((data[1], data[2], data[start : start + size]))
        data = data[start + size :]
    return frames


class UdpMember:
    """A member the way the terminal client is one: TCRP over TCP, then UDP datagrams."""

    def __init__(self, case: unittest.TestCase, server: Server, room: str, name: str, password: str | None = None) -> None:
        payload = {"username": name}
        if password is not None:
            payload["password"] = password
        frames = tcrp(server.tcp, 2, room, payload)
        status = json.loads(frames[0][2])
        case.assertEqual(status["status"], 200, status)
        self.case = case
        self.name = name
        self.header = bytes([len(room.encode()), len(frames[1][2])]) + room.encode() + frames[1][2]
        self.address = ("127.0.0.1", status["udp_port"])
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        case.addCleanup(self.sock.close)
        self.sock.bind(("127.0.0.1", 0))
        self.seen: list[tuple[str | None, Any]] = []

    def send(self, message: bytes) -> None:
        self.sock.sendto(self.header + message, self.address)

    def say(self, text: str) -> None:
        self.send(text.encode())

    def receive(self, match: Callable[[str | None, Any], bool], what: str) -> tuple[str | None, Any]:
        """The first datagram (user or None for a notice, text or notice) that matches, 10 s at most."""
        for seen in self.seen:
            if match(*seen):
                return seen
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                break
            u = data[0]
            seen = (None, json.loads(data[1:])) if u == 0 else (data[1 : 1 + u].decode(), data[1 + u :].decode())
            self.seen.append(seen)
            if match(*seen):
                return seen
        self.case.fail(f"{self.name} did not get {what} within {WAIT} s; got {self.seen}")

    def enter(self) -> None:
        """Say hello (again every second) until welcomed."""
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            self.send(b"\x00hello")
            self.sock.settimeout(1.0)
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            notice = json.loads(data[1:]) if data[0] == 0 else None
            self.seen.append((None, notice) if notice else (data[1 : 1 + data[0]].decode(), data[1 + data[0] :].decode()))
            if notice and notice.get("event") == "welcome":
                return
        self.case.fail(f"{self.name} was not welcomed within {WAIT} s")


# Records the sockets a page opens, and the notifications it shows.
SPY_SCRIPT = """
(() => {
  const RealSocket = window.WebSocket;
  window.__sockets = [];
  window.WebSocket = class extends RealSocket {
    constructor(...args) { super(...args); window.__sockets.push(this); }
  };
  if ("Notification" in window) {
    const RealNotification = window.Notification;
    window.__notes = [];
    class Spy extends RealNotification {
      constructor(title, options) { window.__notes.push([title, options && options.body]); super(title, options); }
    }
    Object.defineProperty(Spy, "permission", { get: () => RealNotification.permission });
    Spy.requestPermission = (...args) => RealNotification.requestPermission(...args);
    window.Notification = Spy;
  }
})();
"""

HIDE_SCRIPT = """
(hidden) => {
  Object.defineProperty(document, "hidden", { configurable: true, get: () => hidden });
  Object.defineProperty(document, "visibilityState", { configurable: true, get: () => (hidden ? "hidden" : "visible") });
  document.dispatchEvent(new Event("visibilitychange"));
}
"""


class BrowserCase(unittest.TestCase):
    """A server and a Chromium for each test."""

    timeout = 120

    def setUp(self) -> None:
        if sync_playwright is None:
            missing(self, "Playwright is not installed (pip install playwright)")
        if not os.access(CHROMIUM, os.X_OK):
            missing(self, f"no Chromium at {CHROMIUM} (apt-get install chromium)")
        self.url = self.start_server()
        self.problems: list[str] = []
        self.playwright = sync_playwright().start()
        self.addCleanup(self.playwright.stop)
        self.browser = self.playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True, timeout=WAIT_MS)
        self.addCleanup(self.browser.close)
        expect.set_options(timeout=WAIT_MS)

    def start_server(self) -> str:
        """Start the server under test; its page's address."""
        self.server = Server(self)
        return self.server.url

    def prepare(self, context: Any) -> None:
        """Anything a test case needs in each browser context before its page opens."""

    def tearDown(self) -> None:
        # No uncaught error, no Content-Security-Policy violation in any page.
        self.assertEqual(self.problems, [])

    def open_page(self, width: int = 1024, height: int = 768, scheme: str = "light", notifications: bool = False) -> Any:
        context = self.browser.new_context(viewport={"width": width, "height": height}, color_scheme=scheme)
        self.addCleanup(context.close)
        context.set_default_timeout(WAIT_MS)
        if notifications:
            context.grant_permissions(["notifications"], origin=self.url.rstrip("/"))
        context.add_init_script(SPY_SCRIPT)
        self.prepare(context)
        page = context.new_page()
        page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))

        def console(message: Any) -> None:
            if message.type == "error" and ("Content Security Policy" in message.text or "Refused to" in message.text):
                self.problems.append(f"console: {message.text}")

        page.on("console", console)
        page.goto(self.url)
        return page

    def enter(self, page: Any, button: str, name: str, room: str, password: str = "", capacity: int | None = None, history: int | None = None) -> None:
        page.get_by_label("Name").fill(name)
        page.get_by_label("Room").fill(room)
        page.get_by_label("Password").fill(password)
        if capacity is not None:
            page.get_by_label("Capacity").fill(str(capacity))
        if history is not None:
            page.get_by_label("History").fill(str(history))
        page.get_by_role("button", name=button, exact=True).click()

    def say(self, page: Any, text: str) -> None:
        field = page.get_by_label("Message")
        field.fill(text)
        field.press("Enter")
        expect(field).to_have_value("")

    @staticmethod
    def log(page: Any) -> Any:
        return page.get_by_role("log")

    @staticmethod
    def members(page: Any) -> Any:
        return page.get_by_role("list", name="Members")

    @staticmethod
    def member(page: Any, name: str) -> Any:
        return page.get_by_role("list", name="Members").get_by_role("listitem").filter(has_text=re.compile(rf"^{re.escape(name)}(\s|$)"))

    def sockets_opened(self, page: Any) -> int:
        return int(page.evaluate("() => window.__sockets.length"))


class TwoBrowsers(BrowserCase):
    def test_create_list_join_chat_leave(self) -> None:
        """Alice creates a protected room; Bob lists it, joins with the password, sees its history; they chat both ways; Bob leaves."""
        alice = self.open_page()
        self.enter(alice, "Create room", "alice", "garden", password="secret", capacity=5, history=5)
        expect(self.log(alice)).to_contain_text("You joined room “garden” as alice")
        expect(self.member(alice, "alice")).to_contain_text("host")
        expect(alice.get_by_label("Message")).to_be_focused()
        self.say(alice, "said before anyone came")

        bob = self.open_page(width=360, height=740)
        bob.get_by_role("button", name="Refresh list").click()
        entry = bob.get_by_role("list", name="Lobby").get_by_role("listitem").filter(has_text="garden")
        expect(entry).to_contain_text("1 of 5 members")
        expect(entry).to_contain_text("password")
        # Picking the room fills the Room field and, as it is protected, moves to the password.
        entry.get_by_role("button", name="garden").click()
        expect(bob.get_by_label("Room")).to_have_value("garden")
        expect(bob.get_by_label("Password")).to_be_focused()
        bob.get_by_label("Name").fill("bob")
        bob.get_by_label("Password").fill("secret")
        bob.get_by_label("Password").press("Enter")  # Enter joins

        expect(self.member(bob, "alice")).to_contain_text("host")
        expect(self.member(bob, "bob")).not_to_contain_text("host")
        expect(bob.locator("#log .history")).to_have_text(re.compile(r"^\d\d:\d\d \(earlier\) alice: said before anyone came$"))
        expect(self.member(alice, "bob")).to_be_visible()
        expect(self.log(alice)).to_contain_text("bob joined.")

        self.say(alice, "hello bob")
        expect(self.log(bob)).to_contain_text("alice: hello bob")
        expect(alice.locator("#log .own").last).to_contain_text("hello bob")  # not echoed: shown when sent

        self.say(bob, "こんにちは alice")
        expect(self.log(alice)).to_contain_text("bob: こんにちは alice")
        expect(alice.locator("#log .mention")).to_contain_text("こんにちは alice")

        # Longer than one datagram: split at UTF-8 boundaries, all of it arrives.
        long_text = "ä" * 2500 + "z" * 2000
        self.say(bob, long_text)
        lines = alice.locator("#log .msg").filter(has_text=re.compile("[äz]{100}"))
        expect(lines).to_have_count(2)
        self.assertEqual("".join(lines.locator(".text").all_text_contents()), long_text)

        bob.get_by_role("button", name="Leave room").click()
        expect(self.log(alice)).to_contain_text("bob left.")
        expect(self.members(alice)).not_to_contain_text("bob")
        expect(bob.get_by_role("button", name="Join room")).to_be_visible()
        expect(bob).to_have_title("ocm chat")

    def test_refusals_in_plain_words(self) -> None:
        """A wrong password, no such room, a taken name: said plainly, and never retried."""
        alice = self.open_page()
        self.enter(alice, "Create room", "alice", "vault", password="right")
        expect(self.members(alice)).to_contain_text("alice")

        bob = self.open_page()
        before = self.sockets_opened(bob)
        self.enter(bob, "Join room", "bob", "vault", password="wrong")
        expect(bob.get_by_role("alert")).to_have_text("Wrong password.")
        expect(bob.get_by_label("Password")).to_be_focused()
        expect(self.log(bob)).to_be_hidden()
        time.sleep(2.5)  # longer than the first reconnect delay: nothing more happens
        self.assertEqual(self.sockets_opened(bob), before + 1)
        expect(self.members(alice)).not_to_contain_text("bob")

        self.enter(bob, "Join room", "bob", "nowhere")
        expect(bob.get_by_role("alert")).to_have_text("There is no room named “nowhere”.")
        self.enter(bob, "Join room", "alice", "vault", password="right")
        expect(bob.get_by_role("alert")).to_contain_text("The name “alice” is already taken")
        self.enter(bob, "Create room", "bob", "vault")
        expect(bob.get_by_role("alert")).to_contain_text("A room named “vault” already exists")
        time.sleep(1.5)
        self.assertEqual(self.sockets_opened(bob), before + 4)
        expect(self.log(alice)).not_to_contain_text("bob")


class WithUdpMember(BrowserCase):
    def test_browser_and_udp_member_chat(self) -> None:
        """A browser member and a UDP member of one room hear each other."""
        alice = self.open_page(width=360, height=740)
        self.enter(alice, "Create room", "alice", "mixed")
        expect(self.members(alice)).to_contain_text("alice")

        carol = UdpMember(self, self.server, "mixed", "carol")
        carol.enter()
        expect(self.member(alice, "carol")).to_be_visible()
        expect(self.log(alice)).to_contain_text("carol joined.")

        carol.say("hi from udp, ünïcode ✓")
        expect(self.log(alice)).to_contain_text("carol: hi from udp, ünïcode ✓")

        self.say(alice, "hi carol, from the browser")
        user, text = carol.receive(lambda u, m: u == "alice", "alice's message")
        self.assertEqual(text, "hi carol, from the browser")

        carol.send(b"\x00leave")
        expect(self.log(alice)).to_contain_text("carol left.")
        expect(self.members(alice)).not_to_contain_text("carol")

        # The host leaving closes the room for the others.
        dave = UdpMember(self, self.server, "mixed", "dave")
        dave.enter()
        expect(self.member(alice, "dave")).to_be_visible()
        alice.get_by_role("button", name="Leave room").click()
        _, notice = dave.receive(lambda u, m: u is None and m.get("event") == "closed", "the closed notice")
        self.assertEqual(notice["reason"], "host_left")

    def test_unread_count_and_mentions_while_hidden(self) -> None:
        """While the tab is hidden the title counts new lines; a mention is marked and notifies (once allowed)."""
        alice = self.open_page(notifications=True)
        self.enter(alice, "Create room", "alice", "attic")
        expect(self.members(alice)).to_contain_text("alice")
        expect(alice).to_have_title("attic · ocm chat")
        notify = alice.get_by_label("Desktop notifications")
        notify.check()
        expect(notify).to_be_checked()

        bob = UdpMember(self, self.server, "attic", "bob")
        bob.enter()
        expect(self.member(alice, "bob")).to_be_visible()

        alice.evaluate(HIDE_SCRIPT, True)
        bob.say("anyone here?")
        bob.say("Alice, are you there?")
        expect(alice).to_have_title("(2) attic · ocm chat")
        expect(alice.locator("#log .mention")).to_have_text(re.compile("Alice, are you there"))
        expect(alice.locator("#log .mention")).to_have_count(1)
        notes = alice.evaluate("() => window.__notes")
        self.assertEqual(notes, [["bob in attic", "Alice, are you there?"]])

        alice.evaluate(HIDE_SCRIPT, False)
        expect(alice).to_have_title("attic · ocm chat")
        bob.say("welcome back")
        expect(self.log(alice)).to_contain_text("welcome back")
        expect(alice).to_have_title("attic · ocm chat")


class Reconnect(BrowserCase):
    def test_dropped_socket_rejoins_but_never_after_a_refusal(self) -> None:
        """A socket closed under the page rejoins with backoff; the host's cannot (the room closed with it): said, not retried."""
        alice = self.open_page()
        self.enter(alice, "Create room", "alice", "porch", password="pw", history=10)
        expect(self.members(alice)).to_contain_text("alice")
        bob = self.open_page(width=360, height=740)
        self.enter(bob, "Join room", "bob", "porch", password="pw")
        expect(self.member(bob, "alice")).to_contain_text("host")
        self.say(alice, "before the drop")
        expect(self.log(bob)).to_contain_text("alice: before the drop")

        # Drop Bob's socket without the page asking.
        bob.evaluate("() => window.__sockets.filter((s) => s.readyState === WebSocket.OPEN).forEach((s) => s.close())")
        expect(self.log(bob)).to_contain_text(re.compile(r"Connection lost, reconnecting in \d+ s…"))
        expect(self.log(bob)).to_contain_text("Reconnected.")
        # The rejoin's history repeats that line: shown once all the same.
        self.say(alice, "after the drop")
        expect(self.log(bob)).to_contain_text("alice: after the drop")
        expect(self.log(bob).get_by_text("before the drop")).to_have_count(1)
        expect(bob.get_by_role("status")).to_contain_text("Reconnected")
        expect(self.log(alice)).to_contain_text("bob left.")
        expect(self.log(alice).get_by_text("bob joined.")).to_have_count(2)
        self.say(bob, "back again")
        expect(self.log(alice)).to_contain_text("bob: back again")

        # Drop the host's socket: the room closes; the rejoin is refused and not retried.
        before = self.sockets_opened(alice)
        alice.evaluate("() => window.__sockets.filter((s) => s.readyState === WebSocket.OPEN).forEach((s) => s.close())")
        expect(self.log(bob)).to_contain_text("The room closed: the host left.")
        expect(bob.get_by_label("Message")).to_be_disabled()
        expect(bob.get_by_role("button", name="Back to rooms")).to_be_visible()
        expect(self.log(alice)).to_contain_text("Could not rejoin: There is no room named “porch”.")
        time.sleep(2.5)
        self.assertEqual(self.sockets_opened(alice), before + 1)
        expect(self.log(bob).get_by_text(re.compile("reconnecting in"))).to_have_count(1)  # the first drop's
        bob.get_by_role("button", name="Back to rooms").click()
        expect(bob.get_by_role("button", name="Join room")).to_be_visible()


class Layout(BrowserCase):
    def test_narrow_dark_keyboard_only(self) -> None:
        """At 360 px, dark scheme, keyboard alone: sane focus order, Enter sends, nothing wider than the screen."""
        page = self.open_page(width=360, height=640, scheme="dark")
        background = page.evaluate("() => getComputedStyle(document.body).backgroundColor")
        self.assertEqual(background, "rgb(17, 20, 24)")  # the dark palette
        expect(page.get_by_label("Name")).to_be_focused()
        order = []
        for _ in range(7):
            order.append(page.evaluate("() => document.activeElement.id"))
            page.keyboard.press("Tab")
        self.assertEqual(order, ["name", "room", "password", "capacity", "history", "join", "create"])
        self.assertLessEqual(page.evaluate("() => document.documentElement.scrollWidth"), 360)

        page.get_by_label("Name").focus()
        page.keyboard.type("zoë")
        page.keyboard.press("Tab")
        page.keyboard.type("nook")
        page.get_by_label("Capacity").focus()
        page.keyboard.type("3")
        page.keyboard.press("Enter")  # Enter in a field for a new room creates it
        expect(self.member(page, "zoë")).to_contain_text("host")
        expect(page.get_by_label("Message")).to_be_focused()
        page.keyboard.type("typed alone")
        page.keyboard.press("Enter")
        expect(page.locator("#log .own")).to_contain_text("typed alone")
        self.assertLessEqual(page.evaluate("() => document.documentElement.scrollWidth"), 360)
        outline = page.evaluate("() => getComputedStyle(document.activeElement).outlineStyle")
        self.assertEqual(outline, "solid")  # visible focus

        page.keyboard.press("Shift+Tab")  # back from the field: the log (the members have no controls)
        self.assertEqual(page.evaluate("() => document.activeElement.id"), "log")
        page.get_by_role("button", name="Leave room").press("Enter")
        expect(page.get_by_label("Room")).to_be_focused()


POLICY = "default-src 'self'; frame-ancestors 'none'"
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}


def frame(operation: int, state: int, room: bytes, payload: bytes) -> bytes:
    """A TCRP frame (SPEC section 1)."""
    return bytes([len(room), operation, state]) + len(payload).to_bytes(29, "big") + room + payload


def notice(event: str, **fields: Any) -> bytes:
    """A server notice datagram (U = 0)."""
    return b"\x00" + json.dumps({"event": event, **fields}).encode()


class FakeGateway:
    """
    Stands in for the server's C{/ws} (Playwright's WebSocket routing): answers
    each socket's TCRP request as C{refuse} says (a status by room name, or
    success), welcomes a hello, answers a ping, and keeps every datagram the
    page sends, so a test can send the section 7 notices today's server does
    not send yet and read the page's bytes.
    """

    TOKEN = b"0123456789abcdef0123456789abcdef"

    def __init__(self) -> None:
        self.sockets: list[Any] = []
        self.requests: list[tuple[int, str, dict[str, Any]]] = []
        self.datagrams: list[bytes] = []
        self.refuse: dict[str, tuple[int, str]] = {}
        self.timeout = 30.0
        self.welcome: dict[str, Any] = {}

    def __call__(self, ws: Any) -> None:
        self.sockets.append(ws)
        request: list[Any] = []

        def received(message: str | bytes) -> None:
            if isinstance(message, str):
                return
            if not request:
                n, operation = message[0], message[1]
                room = message[32 : 32 + n]
                payload = json.loads(message[32 + n :] or b"{}")
                request.append((operation, room.decode(), payload))
                self.requests.append(request[0])
                if operation == 3:
                    ws.send(frame(3, 1, b"", b'{"status":200}'))
                    ws.send(frame(3, 2, b"", b"[]"))
                    ws.close()
                elif room.decode() in self.refuse:
                    status, why = self.refuse[room.decode()]
                    ws.send(frame(operation, 1, room, json.dumps({"status": status, "message": why}).encode()))
                    ws.close()
                else:
                    ws.send(frame(operation, 1, room, json.dumps({"status": 200, "udp_port": 9001, "timeout": self.timeout}).encode()))
                    ws.send(frame(operation, 2, room, self.TOKEN))
                return
            self.datagrams.append(message)
            body = message[2 + message[0] + message[1] :]
            if body == b"\x00hello":
                _, room, payload = request[0]
                fields = {"room": room, "user": payload["username"], "host": payload["username"], "members": [payload["username"]]}
                ws.send(notice("welcome", **{**fields, **self.welcome}))
            elif body == b"\x00ping":
                ws.send(notice("pong"))

        ws.on_message(received)

    def messages(self) -> list[bytes]:
        """The message part of each datagram the page sent."""
        return [d[2 + d[0] + d[1] :] for d in self.datagrams]

    def send(self, data: bytes) -> None:
        self.sockets[-1].send(data)


class WithFakeGateway(BrowserCase):
    """The page against a stand-in for the gateway: the notices and refusals today's server cannot give, and the page's own bytes."""

    ORIGIN = "http://ocm.test"

    def start_server(self) -> str:
        self.gateway = FakeGateway()
        return self.ORIGIN + "/"

    def prepare(self, context: Any) -> None:
        def serve(route: Any) -> None:
            path = route.request.url[len(self.ORIGIN) :].split("?")[0].lstrip("/") or "index.html"
            file = os.path.join(STATIC, path)
            if "/" in path or not os.path.isfile(file):
                route.fulfill(status=404, body="not found")
                return
            with open(file, "rb") as f:
                body = f.read()
            headers = {"Content-Type": TYPES[os.path.splitext(path)[1]], "Content-Security-Policy": POLICY, "X-Content-Type-Options": "nosniff"}
            route.fulfill(status=200, body=body, headers=headers)

        context.route(self.ORIGIN + "/**", serve)
        context.route_web_socket("ws://ocm.test/ws", self.gateway)

    def wait_for(self, page: Any, test: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + WAIT
        while not test():
            if time.monotonic() > deadline:
                self.fail(f"no {what} within {WAIT} s; the page sent {self.gateway.messages()}")
            page.wait_for_timeout(50)  # lets Playwright deliver the socket's messages

    def test_bytes_hello_keepalive_and_split(self) -> None:
        """The request, the hello until welcomed, keepalives at timeout/3, text split under the limit."""
        self.gateway.timeout = 1.5
        page = self.open_page()
        self.enter(page, "Create room", "bob", "r", password="pw", capacity=3, history=4)
        expect(self.log(page)).to_contain_text("You joined room “r” as bob")
        self.assertEqual(self.gateway.requests[-1], (1, "r", {"username": "bob", "password": "pw", "capacity": 3, "history": 4}))
        header = bytes([1, 32]) + b"r" + FakeGateway.TOKEN
        self.assertEqual(self.gateway.datagrams[0], header + b"\x00hello")
        # Idle: an empty keepalive about every timeout/3 = 0.5 s.
        self.wait_for(page, lambda: self.gateway.messages().count(b"") >= 2, "two keepalives")
        text = "é" * 3000 + " and the end"
        self.say(page, text)
        self.wait_for(page, lambda: len([m for m in self.gateway.messages() if m.startswith("é".encode())]) == 2, "two pieces")
        pieces = [m for m in self.gateway.messages() if m and m[0] != 0 and m != b""]
        self.assertEqual([len(p) for p in pieces], [4060, 1952])  # min(4094 - 1 - 32, 4093 - 3) = 4061: no half character
        self.assertEqual(b"".join(pieces).decode(), text)
        self.assertTrue(all(d.startswith(header) for d in self.gateway.datagrams))
        expect(page.locator("#log .own")).to_have_count(2)
        page.get_by_role("button", name="Leave room").click()
        self.wait_for(page, lambda: self.gateway.messages()[-1:] == [b"\x00leave"], "the leave")

    def test_section_7_notices_and_commands(self) -> None:
        """Topic, mute, host, private messages, lock, errors, ping; the commands' bytes; a kick ends it for good."""
        self.gateway.welcome = {"host": "alice", "members": ["alice", "bob", "carol"], "topic": "Plans"}
        page = self.open_page(width=360, height=740)
        self.enter(page, "Join room", "bob", "r")
        expect(self.log(page)).to_contain_text("Topic: Plans")
        expect(page.locator("#topic")).to_have_text("Topic: Plans")
        expect(self.member(page, "alice")).to_contain_text("host")
        expect(self.members(page).get_by_role("listitem")).to_have_count(3)

        self.gateway.send(notice("topic", topic="Picnic on Sunday", user="alice"))
        expect(self.log(page)).to_contain_text("alice set the topic: Picnic on Sunday")
        expect(page.locator("#topic")).to_have_text("Topic: Picnic on Sunday")
        self.gateway.send(notice("muted", user="carol"))
        expect(self.member(page, "carol")).to_contain_text("muted")
        expect(self.log(page)).to_contain_text("carol was muted.")
        self.gateway.send(notice("unmuted", user="carol"))
        expect(self.member(page, "carol")).not_to_contain_text("muted")
        self.gateway.send(notice("host", user="bob"))
        expect(self.log(page)).to_contain_text("You are now the host.")
        expect(self.member(page, "bob")).to_contain_text("host")
        expect(self.member(page, "alice")).not_to_contain_text("host")
        self.gateway.send(notice("private", user="alice", text="psst"))
        expect(self.log(page)).to_contain_text("alice → you (private): psst")
        self.gateway.send(notice("locked"))
        expect(self.log(page)).to_contain_text("The room is locked")
        self.gateway.send(notice("unlocked"))
        expect(self.log(page)).to_contain_text("The room is unlocked")
        for code, said in [("not_host", "Only the host can do that."), ("no_such_user", "no member by that name"), ("muted", "You are muted"), ("too_long", "too long"), ("rate_limited", "too fast")]:
            self.gateway.send(notice("error", code=code))
            expect(self.log(page)).to_contain_text(said)
        self.gateway.send(notice("pong"))  # not asked for: nothing to say
        self.gateway.send(notice("members", members=["alice", "bob", "carol", "dave"], host="bob", muted=["dave"]))
        expect(self.member(page, "dave")).to_contain_text("muted")
        self.assertNotIn("pong", self.log(page).inner_text())
        self.assertNotIn("Members:", self.log(page).inner_text())

        for typed in ["/ping", "/who", "/msg alice see you there", "/kick carol", "/ban carol", "/mute dave", "/unmute dave", "/topic", "/topic New one", "/lock", "/unlock", "/host alice", "//slash at the start"]:
            self.say(page, typed)
        expect(self.log(page)).to_contain_text("pong: the server is alive.")
        expect(self.log(page)).to_contain_text("you → alice (private): see you there")
        sent = [b"\x00ping", b"\x00who", b"\x00msg alice see you there", b"\x00kick carol", b"\x00ban carol", b"\x00mute dave", b"\x00unmute dave", b"\x00topic ", b"\x00topic New one", b"\x00lock", b"\x00unlock", b"\x00host alice", b"/slash at the start"]
        self.wait_for(page, lambda: self.gateway.messages()[-1:] == sent[-1:], "the commands")
        self.assertEqual([m for m in self.gateway.messages() if m not in (b"", b"\x00hello")], sent)
        self.gateway.send(notice("members", members=["alice", "bob"], host="bob"))
        expect(self.log(page)).to_contain_text("Members: alice, bob (host: bob).")
        page.get_by_label("Message").fill("/nonsense")
        page.get_by_label("Message").press("Enter")
        expect(self.log(page)).to_contain_text("Unknown command /nonsense")
        expect(page.get_by_label("Message")).to_have_value("/nonsense")

        self.gateway.send(notice("disconnected", reason="kicked"))
        expect(self.log(page)).to_contain_text("You were kicked out of the room by the host.")
        expect(page.get_by_label("Message")).to_be_disabled()
        page.wait_for_timeout(2500)
        self.assertEqual(len(self.gateway.sockets), 2)  # the list at load, then the join: no rejoin

    def test_refusals_the_server_may_give(self) -> None:
        """403, 503, 429, 413 and 400 in plain words, with the server's message where it helps."""
        page = self.open_page()
        cases = [
            (403, "you are banned from this room", "you are banned from it, or the room is locked"),
            (503, "room r is full", "The room is full or the server is busy. (The server said: room r is full)"),
            (429, "slow down", "Too many requests"),
            (413, "payload too large", "too large"),
            (400, "missing field username", "bad request"),
        ]
        for status, why, said in cases:
            self.gateway.refuse["r"] = (status, why)
            self.enter(page, "Join room", "bob", "r")
            expect(page.get_by_role("alert")).to_contain_text(said)
        page.wait_for_timeout(1500)
        self.assertEqual(len(self.gateway.sockets), 1 + len(cases))
        expect(self.log(page)).to_be_hidden()


class Served(unittest.TestCase):
    """What the server must serve for the page to work under its own policy (no browser needed)."""

    timeout = 60

    def test_page_and_assets(self) -> None:
        server = Server(self)
        with urllib.request.urlopen(server.url, timeout=WAIT) as response:
            self.assertIn("text/html", response.headers["Content-Type"])
            policy = response.headers["Content-Security-Policy"] or ""
            self.assertIn("default-src 'self'", policy)
            self.assertIn("frame-ancestors 'none'", policy)
            self.assertIn(b'<script type="module" src="app.js">', response.read())
        types = {"app.js": "javascript", "wire.js": "javascript", "words.js": "javascript", "ticker.js": "javascript", "style.css": "text/css", "favicon.svg": "image/svg+xml"}
        for name, kind in types.items():
            with urllib.request.urlopen(server.url + name, timeout=WAIT) as response:
                self.assertIn(kind, response.headers["Content-Type"], name)
                with open(os.path.join(STATIC, name), "rb") as f:
                    self.assertEqual(response.read(), f.read(), name)


class _Markup(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self.labels: dict[str, str] = {}
        self.ids: set[str] = set()
        self._label_for: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        for name, _ in attrs:
            if name == "style" or name.startswith("on"):
                self.problems.append(f"<{tag} {name}=...>")
        if tag == "script" and not found.get("src"):
            self.problems.append("inline <script>")
        if tag == "style":
            self.problems.append("inline <style>")
        if "id" in found:
            self.ids.add(str(found["id"]))
        if tag == "label" and found.get("for"):
            self._label_for = found["for"]
            self.labels[str(self._label_for)] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "label":
            self._label_for = None

    def handle_data(self, data: str) -> None:
        if self._label_for:
            self.labels[self._label_for] += data.strip()


class StaticFiles(unittest.TestCase):
    """The page's files as the policy and the tests need them (no server, no browser)."""

    def test_no_inline_code_and_the_names_tests_use(self) -> None:
        markup = _Markup()
        with open(os.path.join(STATIC, "index.html"), encoding="utf-8") as f:
            markup.feed(f.read())
        self.assertEqual(markup.problems, [])
        self.assertEqual(
            {key: markup.labels[key] for key in ("name", "room", "password", "capacity", "message")},
            {"name": "Name", "room": "Room", "password": "Password", "capacity": "Capacity", "message": "Message"},
        )
        for script in ("app.js", "wire.js", "words.js", "ticker.js"):
            with open(os.path.join(STATIC, script), encoding="utf-8") as f:
                code = f.read()
            self.assertNotIn("innerHTML", code, script)
            self.assertNotIn("eval(", code, script)
            for ident in re.findall(r'\$\("([\w-]+)"\)', code):
                self.assertIn(ident, markup.ids, f"{script} looks up #{ident}")

    def test_wire_module_under_node(self) -> None:
        """tests/web/wire.test.mjs: wire.js and words.js against bytes made by ocm/wire.py."""
        node = shutil.which("node")
        if node is None:
            raise unittest.SkipTest("node is not installed")
        test = os.path.join(REPO, "tests", "web", "wire.test.mjs")
        done = subprocess.run([node, "--test", test], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        self.assertIn("# fail 0", done.stdout)
