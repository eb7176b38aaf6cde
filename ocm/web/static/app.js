// The ocm chat page: the lobby (create, join, list rooms) and the room
// (log, members, composer). It speaks SPEC.md section 8 over one WebSocket
// per request; wire.js builds and reads the bytes, words.js says things in
// plain words. Untrusted text (names, messages, topics) only ever goes into
// the page as textContent.

import * as wire from "./wire.js";
import * as words from "./words.js";

const $ = (id) => document.getElementById(id);

const ui = {
  status: $("status"),
  lobby: $("lobby"),
  form: $("room-form"),
  name: $("name"),
  room: $("room"),
  password: $("password"),
  capacity: $("capacity"),
  history: $("history"),
  createOnly: document.querySelector(".create-only"),
  formError: $("form-error"),
  join: $("join"),
  create: $("create"),
  refresh: $("refresh"),
  roomsNote: $("rooms-note"),
  rooms: $("rooms"),
  chat: $("chat"),
  roomTitle: $("room-title"),
  topic: $("topic"),
  notify: $("notify"),
  leave: $("leave"),
  log: $("log"),
  membersTitle: $("members-title"),
  members: $("members"),
  sendForm: $("send-form"),
  message: $("message"),
  send: $("send"),
};

const HELLO_EVERY_MS = 1000;
const HELLO_TRIES = 10;
const REQUEST_TIMEOUT_MS = 10000;
const MAX_LOG_LINES = 2000;
const DEFAULT_TIMEOUT_S = 30;
const PAGE_TITLE = "ocm chat";

/** The room this page is in, or trying to get into; null in the lobby. */
let session = null;
/** Chat lines that arrived while the tab was hidden. */
let unread = 0;

// ---------------------------------------------------------------- helpers

function setStatus(text) {
  ui.status.textContent = text;
}

function openSocket() {
  const ws = new WebSocket(wire.socketURL(location));
  ws.binaryType = "arraybuffer";
  return ws;
}

function pageHidden() {
  return document.hidden === true || document.visibilityState === "hidden";
}

function updateTitle() {
  const base = session && !ui.chat.hidden ? `${session.room} · ${PAGE_TITLE}` : PAGE_TITLE;
  document.title = unread > 0 ? `(${unread}) ${base}` : base;
}

function remember(key, value) {
  try {
    localStorage.setItem(key, value);
  } catch {
    // storage may be off (private mode): nothing to remember then
  }
}

function recall(key) {
  try {
    return localStorage.getItem(key) ?? "";
  } catch {
    return "";
  }
}

function span(className, text) {
  const el = document.createElement("span");
  el.className = className;
  el.textContent = text;
  return el;
}

// ---------------------------------------------------------------- the log

function nearBottom() {
  return ui.log.scrollHeight - ui.log.scrollTop - ui.log.clientHeight < 48;
}

// A log scrolled to its end stays there when it shrinks (the header wraps,
// a phone's keyboard opens); one scrolled back to read stays put.
let logAtEnd = true;
ui.log.addEventListener("scroll", () => {
  logAtEnd = nearBottom();
});
if ("ResizeObserver" in window) {
  new ResizeObserver(() => {
    if (logAtEnd) ui.log.scrollTop = ui.log.scrollHeight;
  }).observe(ui.log);
}

/** Append one line to the log: its time, then the parts (strings or nodes). */
function addLine(kind, parts, when = new Date()) {
  const stick = nearBottom();
  const line = document.createElement("p");
  line.className = `line ${kind}`;
  const time = document.createElement("time");
  time.dateTime = when.toISOString();
  time.textContent = words.clock(when);
  line.append(time, " ", ...parts);
  ui.log.append(line);
  while (ui.log.childElementCount > MAX_LOG_LINES) ui.log.firstElementChild.remove();
  if (stick) ui.log.scrollTop = ui.log.scrollHeight;
  return line;
}

function logNotice(text, kind = "notice") {
  return addLine(kind, [span("text", text)]);
}

const HEARD_KEEP = 2000;

function heardKey(user, text) {
  return `${user}\n${text}`;
}

function hear(s, user, text) {
  const key = heardKey(user, text);
  s.heard.set(key, (s.heard.get(key) ?? 0) + 1);
  if (s.heard.size > HEARD_KEEP) s.heard.delete(s.heard.keys().next().value);
}

/**
 * A chat line. line: {user, text, when?, own?, history?, private?, to?}.
 * Mentions of this member's name mark the line.
 */
function logChat(s, line) {
  const classes = ["msg"];
  const parts = [];
  if (line.own) classes.push("own");
  if (line.history) {
    classes.push("history");
    parts.push(span("visually-hidden", "(earlier) "));
  }
  let who = line.user;
  if (line.private) {
    classes.push("private");
    who = line.own ? `you → ${line.to} (private)` : `${line.user} → you (private)`;
  }
  const mention = !line.own && words.mentions(line.text, s.user);
  if (mention) classes.push("mention");
  parts.push(span("who", who), span("sep", ": "));
  const text = span("text", line.text);
  parts.push(text);
  if (mention) parts.push(span("visually-hidden", " (mentions you)"));
  addLine(classes.join(" "), parts, line.when ?? new Date());
  return mention;
}

// ---------------------------------------------------------------- attention

function notificationsAllowed() {
  return "Notification" in window && Notification.permission === "granted" && ui.notify.checked;
}

/** A new line from someone else: count it while hidden; notify on mentions. */
function attention(s, user, text, important) {
  if (pageHidden()) {
    unread += 1;
    updateTitle();
  }
  if (important && notificationsAllowed() && (pageHidden() || !document.hasFocus())) {
    try {
      const note = new Notification(`${user} in ${s.room}`, { body: text.slice(0, 300), tag: `ocm-${s.room}` });
      note.addEventListener("click", () => {
        window.focus();
        ui.message.focus();
        note.close();
      });
    } catch {
      // some browsers only notify through a service worker: then stay quiet
    }
  }
}

document.addEventListener("visibilitychange", () => {
  if (!pageHidden()) {
    unread = 0;
    updateTitle();
  }
});

ui.notify.addEventListener("change", async () => {
  if (!ui.notify.checked) {
    remember("ocm.notify", "");
    return;
  }
  if (!("Notification" in window)) {
    ui.notify.checked = false;
    setStatus("This browser cannot show desktop notifications.");
    return;
  }
  let permission = Notification.permission;
  if (permission === "default") {
    try {
      permission = await Notification.requestPermission();
    } catch {
      permission = "denied";
    }
  }
  if (permission !== "granted") {
    ui.notify.checked = false;
    setStatus("Desktop notifications are blocked for this page (see the browser's site settings).");
    return;
  }
  remember("ocm.notify", "1");
  setStatus("You will get a desktop notification when someone mentions you.");
});

// ---------------------------------------------------------------- members

function renderMembers(s) {
  const names = [...new Set(s.members)];
  names.sort((a, b) => (a === s.host ? -1 : b === s.host ? 1 : a.localeCompare(b)));
  const items = names.map((name) => {
    const li = document.createElement("li");
    li.append(span("name", name));
    if (name === s.host) {
      li.classList.add("host");
      li.append(" ", span("badge host-badge", "host"));
    }
    if (name === s.user) {
      li.classList.add("me");
      li.append(" ", span("badge", "you"));
    }
    if (s.muted.has(name)) li.append(" ", span("badge muted-badge", "muted"));
    return li;
  });
  ui.members.replaceChildren(...items);
  ui.membersTitle.textContent = `Members (${names.length})`;
}

function renderTopic(s) {
  ui.topic.textContent = s.topic ? `Topic: ${s.topic}` : "";
  ui.topic.hidden = !s.topic;
}

// ---------------------------------------------------------------- views

function showChat(s) {
  ui.roomTitle.textContent = s.room;
  ui.log.replaceChildren();
  s.members = [s.user];
  renderMembers(s);
  renderTopic(s);
  ui.message.disabled = false;
  ui.send.disabled = false;
  ui.leave.textContent = "Leave room";
  ui.lobby.hidden = true;
  ui.chat.hidden = false;
  updateTitle();
  ui.message.focus();
}

function showLobby() {
  ui.chat.hidden = true;
  ui.lobby.hidden = false;
  setBusy(false);
  updateTitle();
}

function setBusy(busy) {
  ui.join.disabled = busy;
  ui.create.disabled = busy;
}

function showFormError(text, field) {
  ui.formError.textContent = text;
  for (const el of [ui.name, ui.room, ui.password, ui.capacity, ui.history]) el.removeAttribute("aria-invalid");
  const target = field ? ui[field] : null;
  if (target) {
    target.setAttribute("aria-invalid", "true");
    target.focus();
    if (target.select) target.select();
  }
}

// ---------------------------------------------------------------- the session

/** Everything about one membership, across reconnects. */
function newSession(operation, fields) {
  return {
    operation,
    user: fields.user,
    room: fields.room,
    password: fields.password,
    capacity: fields.capacity,
    history: fields.history,
    userBytes: wire.utf8Length(fields.user),
    roomBytes: wire.utf8(fields.room),
    ws: null,
    // request: TCRP frame sent; token: status 200 read; chat: in the room;
    // refused; closed: the socket is gone; waiting: a reconnect is due.
    phase: "idle",
    token: null,
    timeout: DEFAULT_TIMEOUT_S,
    inRoom: false, // got a token once: from then on a lost socket rejoins
    welcomed: false, // on this socket
    everWelcomed: false,
    ended: false, // closed, disconnected or a refused rejoin: never reconnect
    leaving: false,
    attempt: 0,
    reconnectTimer: null,
    helloTimer: null,
    requestTimer: null,
    lastSent: 0,
    members: [],
    host: "",
    muted: new Set(),
    topic: "",
    pendingWho: 0,
    pendingPing: 0,
    // chat lines shown, by sender and text: a rejoin's history repeats them
    heard: new Map(),
    replayed: null,
  };
}

function requestPayload(s, operation) {
  const payload = { username: s.user };
  if (s.password) payload.password = s.password;
  if (operation === wire.OP_CREATE) {
    if (s.capacity !== null) payload.capacity = s.capacity;
    if (s.history) payload.history = s.history;
  }
  return payload;
}

function stopSocketTimers(s) {
  clearInterval(s.helloTimer);
  clearTimeout(s.requestTimer);
  s.helloTimer = null;
  s.requestTimer = null;
}

/** Open a socket and ask for the room: the chosen request first, a join when reconnecting. */
function connect(s) {
  const operation = s.inRoom ? wire.OP_JOIN : s.operation;
  const ws = openSocket();
  s.ws = ws;
  s.phase = "request";
  s.welcomed = false;
  ws.addEventListener("open", () => {
    if (s.ws === ws) ws.send(wire.encodeFrame(operation, s.roomBytes, requestPayload(s, operation)));
  });
  ws.addEventListener("message", (event) => {
    if (s.ws === ws) onMessage(s, ws, operation, event.data);
  });
  ws.addEventListener("close", () => {
    if (s.ws === ws) onClose(s);
  });
  s.requestTimer = setTimeout(() => {
    if (s.ws === ws && s.phase !== "chat") ws.close();
  }, REQUEST_TIMEOUT_MS);
}

function connected(s) {
  return s.ws !== null && s.ws.readyState === WebSocket.OPEN && s.phase === "chat" && !s.ended;
}

/** Send one datagram's message (bytes) to the room. */
function sendRaw(s, message) {
  if (!connected(s)) return false;
  s.ws.send(wire.encodeDatagram(s.roomBytes, s.token, message));
  s.lastSent = Date.now();
  return true;
}

function onMessage(s, ws, operation, data) {
  if (!(data instanceof ArrayBuffer)) return; // the contract is binary only
  if (s.phase === "chat") {
    let datagram;
    try {
      datagram = wire.decodeDatagram(data);
    } catch {
      return; // malformed: drop it, as the server would
    }
    if (datagram.user === null) onNotice(s, datagram.notice);
    else onChat(s, datagram.user, datagram.text);
    return;
  }
  if (s.phase !== "request" && s.phase !== "token") return;
  let frame;
  let reply = null;
  try {
    frame = wire.decodeFrame(data);
    if (frame.state === wire.STATE_RESPONSE) reply = wire.parseJSON(frame.payload);
  } catch {
    setStatus("The server sent something this page does not understand.");
    ws.close();
    return;
  }
  if (frame.state === wire.STATE_RESPONSE && s.phase === "request") {
    if (!reply || reply.status !== 200) {
      s.phase = "refused";
      onRefused(s, operation, reply ?? {});
      ws.close();
      return;
    }
    s.timeout = typeof reply.timeout === "number" && reply.timeout > 0 ? reply.timeout : DEFAULT_TIMEOUT_S;
    s.phase = "token";
  } else if (frame.state === wire.STATE_COMPLETE && s.phase === "token") {
    clearTimeout(s.requestTimer);
    s.token = frame.payload.slice();
    s.phase = "chat";
    onAdmitted(s);
  }
}

function onRefused(s, operation, reply) {
  const status = typeof reply.status === "number" ? reply.status : 0;
  const message = typeof reply.message === "string" ? reply.message : "";
  const text = words.refusal(operation, status, message, { room: s.room, user: s.user, passwordGiven: Boolean(s.password) });
  if (s.inRoom) {
    // a rejoin was refused (the room closed, the name was taken...): stop here
    const said = `Could not rejoin: ${text}`;
    logNotice(said, "notice problem");
    endSession(s, said);
    return;
  }
  session = null;
  setBusy(false);
  setStatus("");
  showFormError(text, words.refusalField(operation, status));
}

/** The token arrived: enter the room (the first time) and say hello until welcomed. */
function onAdmitted(s) {
  if (!s.inRoom) {
    s.inRoom = true;
    remember("ocm.name", s.user);
    showChat(s);
    setStatus(`Entering room “${s.room}”…`);
  }
  sendRaw(s, wire.HELLO);
  let tries = 1;
  s.helloTimer = setInterval(() => {
    if (s.welcomed || !connected(s)) {
      clearInterval(s.helloTimer);
      return;
    }
    if (tries >= HELLO_TRIES) {
      clearInterval(s.helloTimer);
      setStatus("The server has not answered yet; still connected.");
      return;
    }
    tries += 1;
    sendRaw(s, wire.HELLO);
  }, HELLO_EVERY_MS);
}

function onChat(s, user, text) {
  hear(s, user, text);
  const mention = logChat(s, { user, text });
  if (!s.members.includes(user)) {
    s.members.push(user);
    renderMembers(s);
  }
  attention(s, user, text, mention);
}

function setMembers(s, notice) {
  if (Array.isArray(notice.members)) s.members = notice.members.filter((m) => typeof m === "string");
  if (typeof notice.host === "string") s.host = notice.host;
  if (Array.isArray(notice.muted)) s.muted = new Set(notice.muted);
  if (typeof notice.topic === "string") s.topic = notice.topic;
  renderMembers(s);
  renderTopic(s);
}

function onNotice(s, notice) {
  const user = typeof notice.user === "string" ? notice.user : "";
  switch (notice.event) {
    case "welcome": {
      s.topic = "";
      setMembers(s, notice);
      if (s.welcomed) return; // the answer to a repeated hello
      s.welcomed = true;
      clearInterval(s.helloTimer);
      if (!s.everWelcomed) {
        s.everWelcomed = true;
        logNotice(words.welcomeText(notice), "notice welcome");
        setStatus(`In room “${s.room}” as ${s.user}.`);
      } else {
        logNotice("Reconnected.", "notice good");
        setStatus(`Reconnected to room “${s.room}”.`);
      }
      s.attempt = 0;
      // after a rejoin the history repeats what this page showed already
      s.replayed = new Map(s.heard);
      return;
    }
    case "history": {
      const key = heardKey(user, String(notice.text ?? ""));
      if (s.replayed && (s.replayed.get(key) ?? 0) > 0) {
        s.replayed.set(key, s.replayed.get(key) - 1);
        return;
      }
      hear(s, user, String(notice.text ?? ""));
      const when = typeof notice.time === "number" ? new Date(notice.time * 1000) : new Date();
      logChat(s, { user, text: String(notice.text ?? ""), when, history: true });
      return;
    }
    case "join":
      if (user && !s.members.includes(user)) s.members.push(user);
      renderMembers(s);
      break;
    case "leave":
      s.members = s.members.filter((m) => m !== user);
      s.muted.delete(user);
      renderMembers(s);
      break;
    case "members":
      setMembers(s, notice);
      if (s.pendingWho === 0) return; // not asked for: just keep the list fresh
      s.pendingWho -= 1;
      break;
    case "host":
      if (user) s.host = user;
      renderMembers(s);
      break;
    case "muted":
      if (user) s.muted.add(user);
      renderMembers(s);
      break;
    case "unmuted":
      s.muted.delete(user);
      renderMembers(s);
      break;
    case "topic":
      s.topic = typeof notice.topic === "string" ? notice.topic : "";
      renderTopic(s);
      break;
    case "pong":
      if (s.pendingPing === 0) return;
      s.pendingPing -= 1;
      break;
    case "private": {
      const text = String(notice.text ?? "");
      logChat(s, { user, text, private: true });
      attention(s, user, text, true);
      return;
    }
    case "closed":
    case "disconnected": {
      const text = words.noticeText(notice, s.user);
      logNotice(text, "notice problem");
      endSession(s, text);
      return;
    }
    default:
      break;
  }
  const text = words.noticeText(notice, s.user);
  if (text) logNotice(text, notice.event === "error" ? "notice problem" : "notice");
}

/** The membership is over for good (closed, disconnected, refused rejoin): keep the log, no reconnect. */
function endSession(s, text) {
  s.ended = true;
  stopSocketTimers(s);
  clearTimeout(s.reconnectTimer);
  s.reconnectTimer = null;
  if (s.ws) s.ws.close();
  setStatus(text);
  ui.message.disabled = true;
  ui.send.disabled = true;
  ui.leave.textContent = "Back to rooms";
  ui.leave.focus();
}

function onClose(s) {
  stopSocketTimers(s);
  s.ws = null;
  const phase = s.phase;
  s.phase = "closed";
  if (session !== s || s.leaving || s.ended || phase === "refused") return;
  if (s.inRoom) {
    scheduleReconnect(s);
    return;
  }
  // never got in: the first request failed
  session = null;
  setBusy(false);
  setStatus("");
  showFormError("Could not reach the chat server: the connection closed before it answered. Try again in a moment.", null);
}

function scheduleReconnect(s) {
  s.phase = "waiting";
  s.attempt += 1;
  const delay = words.backoff(s.attempt);
  const seconds = Math.max(1, Math.round(delay / 1000));
  const text = `Connection lost, reconnecting in ${seconds} s…`;
  setStatus(text);
  logNotice(text, "notice problem");
  s.reconnectTimer = setTimeout(() => reconnectNow(s), delay);
}

function reconnectNow(s) {
  clearTimeout(s.reconnectTimer);
  s.reconnectTimer = null;
  if (session !== s || s.leaving || s.ended || s.phase !== "waiting") return;
  setStatus("Reconnecting…");
  connect(s);
}

window.addEventListener("online", () => {
  if (session && session.phase === "waiting") reconnectNow(session);
});

/** Leave the room (or, after it ended, just go back to the lobby). */
function leave() {
  const s = session;
  if (!s) return;
  s.leaving = true;
  stopSocketTimers(s);
  clearTimeout(s.reconnectTimer);
  if (s.ws) {
    if (connected(s)) sendRaw(s, wire.LEAVE);
    s.ws.close(1000, "leave");
  }
  session = null;
  unread = 0;
  showLobby();
  setStatus(s.ended ? "" : `You left room “${s.room}”.`);
  listRooms();
  ui.room.focus();
}

// Closing the tab leaves the room at once (rather than when the socket's end is noticed).
window.addEventListener("pagehide", () => {
  const s = session;
  if (!s) return;
  s.leaving = true;
  clearTimeout(s.reconnectTimer);
  if (connected(s)) sendRaw(s, wire.LEAVE);
  if (s.ws) s.ws.close(1000, "leave");
});

// Back from the browser's page cache after leaving that way: start over in the lobby.
window.addEventListener("pageshow", (event) => {
  if (event.persisted && session && session.leaving) {
    session = null;
    showLobby();
    listRooms();
  }
});

// ---------------------------------------------------------------- keepalive

function tick() {
  const s = session;
  if (s && connected(s) && Date.now() - s.lastSent >= (s.timeout * 1000) / 3) sendRaw(s, wire.KEEPALIVE);
}

function startTicker() {
  const fallback = () => setInterval(tick, 1000);
  try {
    const worker = new Worker("ticker.js");
    worker.addEventListener("message", tick);
    worker.addEventListener("error", () => {
      worker.terminate();
      fallback();
    });
  } catch {
    fallback();
  }
}

// ---------------------------------------------------------------- sending

function sendInput() {
  const s = session;
  const raw = ui.message.value;
  if (!s || !raw.trim()) return;
  const command = words.parseInput(raw);
  if (command.kind === "leave") {
    ui.message.value = "";
    leave();
    return;
  }
  if (command.kind === "help") {
    for (const line of words.HELP) logNotice(line, "notice help");
    ui.message.value = "";
    return;
  }
  if (command.kind === "bad") {
    logNotice(command.why, "notice problem");
    return;
  }
  if (!connected(s)) {
    logNotice("Not connected: your message was not sent (it is still in the message field).", "notice problem");
    return;
  }
  if (command.kind === "control") {
    const message = wire.control(...command.words);
    if (2 + s.roomBytes.length + s.token.length + message.length > wire.MAX_DATAGRAM_TO_SERVER) {
      logNotice("That is too long to send in one message.", "notice problem");
      return;
    }
    if (command.words[0] === "who") s.pendingWho += 1;
    if (command.words[0] === "ping") s.pendingPing += 1;
    sendRaw(s, message);
    if (command.private) logChat(s, { user: s.user, to: command.private.user, text: command.private.text, own: true, private: true });
  } else {
    // a chat text must not start with byte 0x00 (that makes a control message)
    const text = command.text.replace(/\u0000/g, "");
    const max = wire.maxTextBytes(s.roomBytes.length, s.token.length, s.userBytes);
    for (const piece of wire.splitUtf8(text, max)) {
      sendRaw(s, wire.utf8(piece));
      hear(s, s.user, piece);
      logChat(s, { user: s.user, text: piece, own: true });
    }
  }
  ui.message.value = "";
  ui.log.scrollTop = ui.log.scrollHeight;
}

ui.sendForm.addEventListener("submit", (event) => {
  event.preventDefault();
  sendInput();
});

ui.message.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing && event.keyCode !== 229) {
    event.preventDefault();
    sendInput();
  }
});

ui.leave.addEventListener("click", leave);

// ---------------------------------------------------------------- the lobby

function wholeNumber(input, least, what) {
  if (input.validity.badInput) return { problem: `${what} must be a whole number.` };
  const text = input.value.trim();
  if (!text) return { value: null };
  const n = Number(text);
  if (!Number.isInteger(n) || n < least) return { problem: `${what} must be a whole number, at least ${least}.` };
  return { value: n };
}

// The button that was clicked, for browsers without SubmitEvent.submitter.
let clicked = null;
ui.join.addEventListener("click", () => {
  clicked = ui.join;
});
ui.create.addEventListener("click", () => {
  clicked = ui.create;
});

ui.form.addEventListener("submit", (event) => {
  event.preventDefault();
  const submitter = event.submitter ?? clicked;
  clicked = null;
  if (session) return;
  // Enter in a "for a new room" field creates; elsewhere Enter joins.
  // (Enter submits through the first button, Join room, with the field still focused.)
  const operation = submitter === ui.create || ui.createOnly.contains(document.activeElement) ? wire.OP_CREATE : wire.OP_JOIN;
  const user = ui.name.value.trim();
  const room = ui.room.value.trim();
  const problemName = wire.nameProblem(user, "Your name");
  if (problemName) return showFormError(problemName, "name");
  const problemRoom = wire.nameProblem(room, "The room name");
  if (problemRoom) return showFormError(problemRoom, "room");
  let capacity = { value: null };
  let history = { value: null };
  if (operation === wire.OP_CREATE) {
    capacity = wholeNumber(ui.capacity, 1, "Capacity");
    if (capacity.problem) return showFormError(capacity.problem, "capacity");
    history = wholeNumber(ui.history, 0, "History");
    if (history.problem) return showFormError(history.problem, "history");
  }
  showFormError("", null);
  session = newSession(operation, { user, room, password: ui.password.value, capacity: capacity.value, history: history.value });
  setBusy(true);
  setStatus(operation === wire.OP_CREATE ? `Creating room “${room}”…` : `Joining room “${room}”…`);
  connect(session);
});

let listing = null;

function membersText(room) {
  const n = Number(room.members) || 0;
  const people = n === 1 ? "1 member" : `${n} members`;
  if (typeof room.capacity !== "number") return `${people}, no limit`;
  return `${n} of ${room.capacity} members${n >= room.capacity ? " (full)" : ""}`;
}

function renderRooms(rooms) {
  const items = rooms
    .filter((room) => room && typeof room.name === "string")
    .sort((a, b) => a.name.localeCompare(b.name))
    .map((room) => {
      const li = document.createElement("li");
      const pick = document.createElement("button");
      pick.type = "button";
      pick.className = "pick";
      pick.textContent = room.name;
      pick.addEventListener("click", () => {
        ui.room.value = room.name;
        if (room.protected) ui.password.focus();
        else ui.join.focus();
      });
      li.append(pick, " ", span("meta", membersText(room)), " ", span(room.protected ? "badge lock" : "badge open", room.protected ? "password" : "open"));
      return li;
    });
  ui.rooms.replaceChildren(...items);
  ui.roomsNote.textContent = items.length ? (items.length === 1 ? "1 room." : `${items.length} rooms.`) : "No rooms yet: create one.";
}

function listRooms() {
  if (listing) return;
  ui.roomsNote.textContent = "Loading the rooms…";
  let done = false;
  const ws = openSocket();
  listing = ws;
  const timer = setTimeout(() => ws.close(), REQUEST_TIMEOUT_MS);
  ws.addEventListener("open", () => ws.send(wire.encodeFrame(wire.OP_LIST, "", {})));
  ws.addEventListener("message", (event) => {
    if (!(event.data instanceof ArrayBuffer)) return;
    try {
      const frame = wire.decodeFrame(event.data);
      if (frame.state === wire.STATE_RESPONSE) {
        const reply = wire.parseJSON(frame.payload);
        if (reply.status !== 200) {
          done = true;
          ui.roomsNote.textContent = `Could not list the rooms. ${words.refusal(wire.OP_LIST, reply.status, reply.message ?? "")}`;
          ws.close();
        }
      } else if (frame.state === wire.STATE_COMPLETE) {
        const rooms = wire.parseJSON(frame.payload);
        done = true;
        renderRooms(Array.isArray(rooms) ? rooms : []);
        ws.close(); // the server closes it too
      }
    } catch {
      done = true;
      ui.roomsNote.textContent = "Could not list the rooms: the server's answer was not understood.";
      ws.close();
    }
  });
  ws.addEventListener("close", () => {
    clearTimeout(timer);
    listing = null;
    if (!done) ui.roomsNote.textContent = "Could not list the rooms: the server did not answer.";
  });
}

ui.refresh.addEventListener("click", listRooms);

// ---------------------------------------------------------------- start

ui.name.value = recall("ocm.name");
ui.notify.checked = recall("ocm.notify") === "1" && "Notification" in window && Notification.permission === "granted";
updateTitle();
(ui.name.value ? ui.room : ui.name).focus();
startTicker();
listRooms();
