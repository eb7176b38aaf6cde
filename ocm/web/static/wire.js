// The ocm wire contract (SPEC.md sections 1, 2 and 8) for the browser page:
// pure functions that build and read TCRP frames and chat datagrams, and that
// split long text at UTF-8 character boundaries. No DOM, no sockets: the
// same module runs under node's test runner.

export const OP_CREATE = 1;
export const OP_JOIN = 2;
export const OP_LIST = 3;

export const STATE_REQUEST = 0;
export const STATE_RESPONSE = 1;
export const STATE_COMPLETE = 2;

/** TCRP header: RoomNameSize (1), Operation (1), State (1), payload size (29). */
export const HEADER_SIZE = 32;
const SIZE_FIELD = 29;
/** Room names, usernames and tokens are 1..255 bytes. */
export const MAX_NAME_BYTES = 255;
/** A datagram to the server: at most 4096 bytes, R | T | RoomName | Token | Message. */
export const MAX_DATAGRAM_TO_SERVER = 4096;
/** A datagram from the server: at most 4094 bytes, U | UserName | Message. */
export const MAX_DATAGRAM_FROM_SERVER = 4094;

export class WireError extends Error {}

const encoder = new TextEncoder();
const strictDecoder = new TextDecoder("utf-8", { fatal: true });
const lenientDecoder = new TextDecoder("utf-8");

/** The UTF-8 bytes of a string. */
export function utf8(text) {
  return encoder.encode(text);
}

/** How many bytes a string takes in UTF-8. */
export function utf8Length(text) {
  let n = 0;
  for (const ch of text) {
    const cp = ch.codePointAt(0);
    n += cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
  }
  return n;
}

/** Text from UTF-8 bytes; invalid sequences become U+FFFD. */
export function decodeText(bytes) {
  return lenientDecoder.decode(bytes);
}

function asBytes(data) {
  if (data instanceof Uint8Array) return data;
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  if (typeof data === "string") return utf8(data);
  throw new TypeError("expected bytes, an ArrayBuffer or a string");
}

/** True if the text has a control character (Unicode category Cc). */
export function hasControl(text) {
  return /[\u0000-\u001f\u007f-\u009f]/u.test(text);
}

/**
 * Why a room name or username would be refused, in plain words, or null if
 * it is fine: 1..255 bytes of UTF-8 and no control characters.
 */
export function nameProblem(text, what) {
  if (!text) return `${what} is empty.`;
  if (hasControl(text)) return `${what} has a control character.`;
  if (utf8Length(text) > MAX_NAME_BYTES) return `${what} is too long (at most ${MAX_NAME_BYTES} bytes of UTF-8).`;
  return null;
}

/**
 * One TCRP frame: the 32-byte header, the room name, then the payload.
 * payload: an object (sent as JSON), a string, or bytes.
 */
export function encodeFrame(operation, roomName, payload = {}, state = STATE_REQUEST) {
  const room = asBytes(roomName ?? "");
  let body;
  if (payload === null || payload === undefined) body = new Uint8Array(0);
  else if (typeof payload === "string" || payload instanceof Uint8Array || payload instanceof ArrayBuffer) body = asBytes(payload);
  else body = utf8(JSON.stringify(payload));
  if (room.length > MAX_NAME_BYTES) throw new WireError("room name longer than 255 bytes");
  const frame = new Uint8Array(HEADER_SIZE + room.length + body.length);
  frame[0] = room.length;
  frame[1] = operation;
  frame[2] = state;
  // 29-byte big-endian size; a page never sends more than 2^32 bytes.
  let size = body.length;
  for (let i = HEADER_SIZE - 1; i >= HEADER_SIZE - SIZE_FIELD && size > 0; i--) {
    frame[i] = size % 256;
    size = Math.floor(size / 256);
  }
  frame.set(room, HEADER_SIZE);
  frame.set(body, HEADER_SIZE + room.length);
  return frame;
}

/**
 * Read one TCRP frame (one WebSocket message). Returns
 * {operation, state, room, roomBytes, payload}; throws WireError if the
 * message is shorter or longer than its header says.
 */
export function decodeFrame(data) {
  const bytes = asBytes(data);
  if (bytes.length < HEADER_SIZE) throw new WireError("frame shorter than its header");
  let size = 0;
  for (let i = HEADER_SIZE - SIZE_FIELD; i < HEADER_SIZE; i++) {
    size = size * 256 + bytes[i];
    if (size > Number.MAX_SAFE_INTEGER / 256) throw new WireError("frame payload size too large");
  }
  const nameSize = bytes[0];
  if (bytes.length !== HEADER_SIZE + nameSize + size) throw new WireError("frame length does not match its header");
  const roomBytes = bytes.subarray(HEADER_SIZE, HEADER_SIZE + nameSize);
  return {
    operation: bytes[1],
    state: bytes[2],
    roomBytes,
    room: decodeText(roomBytes),
    payload: bytes.subarray(HEADER_SIZE + nameSize),
  };
}

/** The JSON in a frame's (or notice's) payload; throws WireError if it is not JSON. */
export function parseJSON(bytes) {
  try {
    return JSON.parse(strictDecoder.decode(asBytes(bytes)));
  } catch (e) {
    throw new WireError(`payload is not UTF-8 JSON: ${e.message}`);
  }
}

/** A datagram to the server: R | T | RoomName | Token | Message. */
export function encodeDatagram(roomName, token, message = new Uint8Array(0)) {
  const room = asBytes(roomName);
  const tok = asBytes(token);
  const msg = asBytes(message);
  if (room.length > MAX_NAME_BYTES || tok.length > MAX_NAME_BYTES) throw new WireError("room name or token longer than 255 bytes");
  const out = new Uint8Array(2 + room.length + tok.length + msg.length);
  out[0] = room.length;
  out[1] = tok.length;
  out.set(room, 2);
  out.set(tok, 2 + room.length);
  out.set(msg, 2 + room.length + tok.length);
  return out;
}

/**
 * Read a datagram from the server: U | UserName | Message.
 * A chat message gives {user, text}; a notice (U = 0) gives
 * {user: null, notice} where notice is the JSON object (with "event").
 * Throws WireError if it is shorter than its header says or a notice is not JSON.
 */
export function decodeDatagram(data) {
  const bytes = asBytes(data);
  if (bytes.length < 1) throw new WireError("empty datagram");
  const u = bytes[0];
  if (bytes.length < 1 + u) throw new WireError("datagram shorter than its username");
  const message = bytes.subarray(1 + u);
  if (u === 0) {
    const notice = parseJSON(message);
    if (notice === null || typeof notice !== "object" || Array.isArray(notice)) throw new WireError("notice is not a JSON object");
    return { user: null, notice };
  }
  return { user: decodeText(bytes.subarray(1, 1 + u)), text: decodeText(message) };
}

/** A control message: byte 0x00 then the words, separated by one space. */
export function control(...words) {
  const text = utf8(words.join(" "));
  const out = new Uint8Array(1 + text.length);
  out.set(text, 1);
  return out;
}

export const HELLO = control("hello");
export const LEAVE = control("leave");
export const WHO = control("who");
export const PING = control("ping");
export const KEEPALIVE = new Uint8Array(0);

/**
 * The most bytes of chat text one datagram may carry:
 * min(4094 - R - T, 4093 - len(username)), all lengths in bytes.
 */
export function maxTextBytes(roomBytes, tokenBytes, userBytes) {
  return Math.max(0, Math.min(4094 - roomBytes - tokenBytes, 4093 - userBytes));
}

/**
 * Split text into pieces of at most maxBytes bytes of UTF-8 each, only at
 * character (code point) boundaries; the pieces joined give the text back.
 * A piece ends after a space or line break when there is one in its second
 * half, so that words stay whole where they can. Empty text gives no pieces.
 */
export function splitUtf8(text, maxBytes) {
  if (!(maxBytes >= 4)) throw new RangeError("maxBytes must be at least 4 (one character)");
  const pieces = [];
  let chars = []; // the current piece, one string per code point
  let sizes = [];
  let size = 0;
  let lastSpace = -1; // index in chars of the last whitespace
  for (const ch of text) {
    const cp = ch.codePointAt(0);
    const n = cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
    while (size + n > maxBytes) {
      let cut = chars.length;
      if (lastSpace >= 0) {
        const before = sizes.slice(0, lastSpace + 1).reduce((a, b) => a + b, 0);
        if (before * 2 >= size) cut = lastSpace + 1;
      }
      pieces.push(chars.slice(0, cut).join(""));
      chars = chars.slice(cut);
      sizes = sizes.slice(cut);
      size = sizes.reduce((a, b) => a + b, 0);
      lastSpace = -1;
    }
    chars.push(ch);
    sizes.push(n);
    size += n;
    if (/\s/u.test(ch)) lastSpace = chars.length - 1;
  }
  if (chars.length) pieces.push(chars.join(""));
  return pieces;
}

/** The WebSocket address of the gateway for a page at this location. */
export function socketURL(loc) {
  const scheme = loc.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${loc.host}/ws`;
}
