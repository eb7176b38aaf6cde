// What the page says, in plain words: refusals (SPEC sections 1 and 7) and
// server notices (sections 2 and 7). Pure functions of their arguments.

import { OP_CREATE, OP_JOIN } from "./wire.js";

function serverSaid(message) {
  return message ? ` (The server said: ${message})` : "";
}

/**
 * A TCRP refusal in plain words.
 * operation: 1 create, 2 join, 3 list; status and message from the state-1
 * frame; context: {room, user, passwordGiven}.
 */
export function refusal(operation, status, message, context = {}) {
  const room = context.room ?? "";
  const user = context.user ?? "";
  switch (status) {
    case 400:
      return `The server could not accept the request (bad request).${serverSaid(message)}`;
    case 401:
      return context.passwordGiven ? "Wrong password." : `Room “${room}” needs a password.`;
    case 403:
      return `You cannot join room “${room}”: you are banned from it, or the room is locked.${serverSaid(message)}`;
    case 404:
      return `There is no room named “${room}”.`;
    case 409:
      return operation === OP_CREATE
        ? `A room named “${room}” already exists: choose another name, or join it.`
        : `The name “${user}” is already taken in room “${room}”: choose another name.`;
    case 413:
      return `The request is too large for the server.${serverSaid(message)}`;
    case 429:
      return "Too many requests: wait a minute, then try again.";
    case 503:
      return operation === OP_JOIN
        ? `The room is full or the server is busy.${serverSaid(message)}`
        : `The server is busy (it has as many rooms or members as it can take).${serverSaid(message)}`;
    default:
      return `The server refused the request (status ${status}).${serverSaid(message)}`;
  }
}

/** The form field a refusal is about, so the page can move focus there. */
export function refusalField(operation, status) {
  if (status === 401) return "password";
  if (status === 409) return operation === OP_CREATE ? "room" : "name";
  if (status === 404 || status === 403) return "room";
  return null;
}

const LEAVE_REASONS = {
  left: "left",
  timeout: "left (timed out)",
  unreachable: "left (unreachable)",
  kicked: "was kicked out by the host",
  banned: "was banned by the host",
};

const DISCONNECT_REASONS = {
  timeout: "You were disconnected: the server heard nothing from you for too long.",
  unreachable: "You were disconnected: the server could not reach you.",
  kicked: "You were kicked out of the room by the host.",
  banned: "You were banned from the room by the host.",
};

const CLOSE_REASONS = {
  host_left: "The room closed: the host left.",
  shutdown: "The room closed: the server is shutting down.",
};

const ERROR_CODES = {
  too_long: "Your message was too long and was not delivered.",
  rate_limited: "You are sending too fast: some messages were not delivered.",
  no_such_user: "There is no member by that name in the room.",
  not_host: "Only the host can do that.",
  muted: "You are muted: your messages are not delivered.",
};

function names(list) {
  return Array.isArray(list) && list.length ? list.join(", ") : "nobody";
}

/**
 * A notice as one line for the chat log, or null for notices that only
 * update the page (welcome, members, pong and history are shown by the page
 * itself). me: this member's username.
 */
export function noticeText(notice, me) {
  const user = typeof notice.user === "string" ? notice.user : "someone";
  const you = user === me;
  switch (notice.event) {
    case "join":
      return `${user} joined.`;
    case "leave":
      return `${user} ${LEAVE_REASONS[notice.reason] ?? `left (${notice.reason})`}.`;
    case "disconnected":
      return DISCONNECT_REASONS[notice.reason] ?? `You were disconnected (${notice.reason}).`;
    case "closed":
      return CLOSE_REASONS[notice.reason] ?? `The room closed (${notice.reason}).`;
    case "error":
      return ERROR_CODES[notice.code] ?? `The server reported an error: ${notice.code}.`;
    case "muted":
      return you ? "The host muted you: your messages are not delivered." : `${user} was muted.`;
    case "unmuted":
      return you ? "The host unmuted you." : `${user} was unmuted.`;
    case "topic":
      return notice.topic ? `${user} set the topic: ${notice.topic}` : `${user} cleared the topic.`;
    case "locked":
      return "The room is locked: nobody else can join.";
    case "unlocked":
      return "The room is unlocked: others can join again.";
    case "host":
      return you ? "You are now the host." : `${user} is now the host.`;
    case "members":
      return `Members: ${names(notice.members)} (host: ${notice.host}).`;
    case "pong":
      return "pong: the server is alive.";
    default:
      return null;
  }
}

/** The welcome notice as a line: where you are and who is there. */
export function welcomeText(notice) {
  const topic = notice.topic ? ` Topic: ${notice.topic}` : "";
  return `You joined room “${notice.room}” as ${notice.user}. Host: ${notice.host}. Here: ${names(notice.members)}.${topic}`;
}

/**
 * True if text mentions the name: as a whole word, any case, @ optional; a
 * name in a script written without spaces (Japanese, Chinese, Korean)
 * anywhere in the text.
 */
export function mentions(text, name) {
  if (!name || !text) return false;
  if (/[\p{Script=Han}\p{Script=Hiragana}\p{Script=Katakana}\p{Script=Hangul}]/u.test(name)) {
    return text.toLowerCase().includes(name.toLowerCase());
  }
  const escaped = name.replace(/[.*+?^${}()|[\]\\/-]/g, "\\$&");
  const re = new RegExp(`(^|[^\\p{L}\\p{N}_])@?${escaped}(?=$|[^\\p{L}\\p{N}_])`, "iu");
  return re.test(text);
}

/** Reconnect delay in ms for the n-th attempt (1, 2, ...): exponential, capped, jittered. */
export function backoff(attempt, random = Math.random, baseMs = 1000, capMs = 30000) {
  const ceiling = Math.min(capMs, baseMs * 2 ** Math.max(0, attempt - 1));
  return Math.round(ceiling / 2 + (random() * ceiling) / 2);
}

/** "HH:MM" (local time) for a Date. */
export function clock(date) {
  const hh = String(date.getHours()).padStart(2, "0");
  const mm = String(date.getMinutes()).padStart(2, "0");
  return `${hh}:${mm}`;
}

export const HELP = [
  "Type a message and press Enter to send it (Shift+Enter for a new line).",
  "/who: list the members · /leave: leave the room · /msg NAME TEXT: a private message · /ping: is the server alive?",
  "Host only: /topic TEXT · /kick NAME · /ban NAME · /mute NAME · /unmute NAME · /lock · /unlock · /host NAME",
  "Start a line with // to send a message that begins with /.",
];

const SIMPLE = new Set(["who", "ping", "lock", "unlock"]);
const ONE_NAME = new Set(["kick", "ban", "mute", "unmute", "host"]);

/**
 * What a line typed in the message field means:
 * {kind: "text", text} | {kind: "control", words, private?: {user, text}} |
 * {kind: "leave"} | {kind: "help"} | {kind: "bad", why}.
 */
export function parseInput(line) {
  if (!line.startsWith("/")) return { kind: "text", text: line };
  if (line.startsWith("//")) return { kind: "text", text: line.slice(1) };
  const match = /^\/(\S+)\s?([\s\S]*)$/u.exec(line);
  const command = match ? match[1].toLowerCase() : "";
  const rest = match ? match[2] : "";
  if (command === "leave" || command === "quit") return { kind: "leave" };
  if (command === "help") return { kind: "help" };
  if (SIMPLE.has(command)) return { kind: "control", words: [command] };
  // "topic " with empty TEXT clears the topic.
  if (command === "topic") return { kind: "control", words: ["topic", rest] };
  if (ONE_NAME.has(command)) {
    if (!rest.trim()) return { kind: "bad", why: `/${command} needs a member's name.` };
    return { kind: "control", words: [command, rest.trim()] };
  }
  if (command === "msg") {
    const m = /^(\S+) ([\s\S]+)$/u.exec(rest);
    if (!m) return { kind: "bad", why: "/msg needs a name and a message: /msg NAME TEXT" };
    return { kind: "control", words: ["msg", m[1], m[2]], private: { user: m[1], text: m[2] } };
  }
  return { kind: "bad", why: `Unknown command /${command}. Type /help for the commands; start with // to send a line beginning with /.` };
}
