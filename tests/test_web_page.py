"""
The browser chat page (C{ocm/web/static}, SPEC.md section 8) as people use
it: a real Chromium driven by Playwright's sync API, against a real
C{twistd --pidfile= -n ocm --web PORT} in a subprocess, with a plain UDP
member (TCRP over TCP, then datagrams) in the same rooms.

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
        self.server = Server(self)
        self.problems: list[str] = []
        self.playwright = sync_playwright().start()
        self.addCleanup(self.playwright.stop)
        self.browser = self.playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True, timeout=WAIT_MS)
        self.addCleanup(self.browser.close)
        expect.set_options(timeout=WAIT_MS)

    def tearDown(self) -> None:
        # No uncaught error, no Content-Security-Policy violation in any page.
        self.assertEqual(self.problems, [])

    def open_page(self, width: int = 1024, height: int = 768, scheme: str = "light", notifications: bool = False) -> Any:
        context = self.browser.new_context(viewport={"width": width, "height": height}, color_scheme=scheme)
        self.addCleanup(context.close)
        context.set_default_timeout(WAIT_MS)
        if notifications:
            context.grant_permissions(["notifications"], origin=self.server.url.rstrip("/"))
        context.add_init_script(SPY_SCRIPT)
        page = context.new_page()
        page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))

        def console(message: Any) -> None:
            if message.type == "error" and ("Content Security Policy" in message.text or "Refused to" in message.text):
                self.problems.append(f"console: {message.text}")

        page.on("console", console)
        page.goto(self.server.url)
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
