// node --test tests/web/wire.test.mjs: the page's pure modules (wire.js,
// words.js) against byte vectors made with the server's own ocm/wire.py.
// The static files are plain ES modules next to no package.json, so they
// are copied into a temporary folder marked "type": "module" first.

import { test } from "node:test";
import assert from "node:assert/strict";
import { cpSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const staticDir = fileURLToPath(new URL("../../ocm/web/static/", import.meta.url));
const copy = mkdtempSync(join(tmpdir(), "ocm-web-"));
cpSync(staticDir, copy, { recursive: true });
writeFileSync(join(copy, "package.json"), '{"type": "module"}\n');
const wire = await import(pathToFileURL(join(copy, "wire.js")).href);
const words = await import(pathToFileURL(join(copy, "words.js")).href);
rmSync(copy, { recursive: true, force: true });

const hex = (bytes) => Buffer.from(bytes).toString("hex");
const unhex = (text) => new Uint8Array(Buffer.from(text, "hex"));
const ZEROS = "00".repeat(27); // the 29-byte size field but its last two bytes

test("a create request frame is the server's bytes", () => {
  const frame = wire.encodeFrame(wire.OP_CREATE, "ルーム", { username: "alice" });
  assert.equal(hex(frame), `090100${ZEROS}0014e383abe383bce383a07b22757365726e616d65223a22616c696365227d`);
});

test("a list request: no room name, {} payload", () => {
  const frame = wire.encodeFrame(wire.OP_LIST, "", {});
  assert.equal(frame.length, 34);
  assert.deepEqual([...frame.subarray(0, 3)], [0, 3, 0]);
  assert.equal(frame[31], 2);
  assert.equal(new TextDecoder().decode(frame.subarray(32)), "{}");
});

test("payload sizes past one byte are big-endian over 29 bytes", () => {
  const frame = wire.encodeFrame(wire.OP_JOIN, "r", "x".repeat(70000));
  assert.deepEqual([...frame.subarray(28, 32)], [0, 1, 0x11, 0x70]);
  assert.equal(wire.decodeFrame(frame).payload.length, 70000);
});

test("a refusal and a completion decode", () => {
  const refusal = wire.decodeFrame(unhex(`010201${ZEROS}0029727b22737461747573223a3430312c226d657373616765223a2277726f6e672070617373776f7264227d`));
  assert.equal(refusal.operation, 2);
  assert.equal(refusal.state, wire.STATE_RESPONSE);
  assert.equal(refusal.room, "r");
  assert.deepEqual(wire.parseJSON(refusal.payload), { status: 401, message: "wrong password" });
  const done = wire.decodeFrame(unhex(`010102${ZEROS}00107230313233343536373839616263646566`));
  assert.equal(done.state, wire.STATE_COMPLETE);
  assert.equal(new TextDecoder().decode(done.payload), "0123456789abcdef");
});

test("a frame whose length disagrees with its header is refused", () => {
  const frame = wire.encodeFrame(wire.OP_JOIN, "r", { username: "a" });
  assert.throws(() => wire.decodeFrame(frame.subarray(0, frame.length - 1)), wire.WireError);
  assert.throws(() => wire.decodeFrame(new Uint8Array(10)), wire.WireError);
  const huge = new Uint8Array(32);
  huge[3] = 1;
  assert.throws(() => wire.decodeFrame(huge), wire.WireError);
});

test("datagrams to the server: R | T | RoomName | Token | Message", () => {
  assert.equal(hex(wire.encodeDatagram("ルーム", "tok", wire.HELLO)), "0903e383abe383bce383a0746f6b0068656c6c6f");
  assert.equal(hex(wire.encodeDatagram("r", "t")), "010172" + "74");
  assert.equal(hex(wire.LEAVE), "006c65617665");
  assert.equal(hex(wire.WHO), "0077686f");
  assert.equal(hex(wire.control("msg", "bob", "hi there")), "006d736720626f62206869207468657265");
});

test("datagrams from the server: chat and notices", () => {
  assert.deepEqual(wire.decodeDatagram(unhex("06e3839ce38396e38284e38182")), { user: "ボブ", text: "やあ" });
  assert.deepEqual(wire.decodeDatagram(unhex("007b226576656e74223a226a6f696e222c2275736572223a22626f62227d")), {
    user: null,
    notice: { event: "join", user: "bob" },
  });
  assert.throws(() => wire.decodeDatagram(unhex("05626f62")), wire.WireError);
  assert.throws(() => wire.decodeDatagram(unhex("005b315d")), wire.WireError);
  assert.throws(() => wire.decodeDatagram(new Uint8Array(0)), wire.WireError);
});

test("the most text per datagram is min(4094 - R - T, 4093 - U)", () => {
  assert.equal(wire.maxTextBytes(1, 32, 5), 4061);
  assert.equal(wire.maxTextBytes(255, 255, 1), 3584);
  assert.equal(wire.maxTextBytes(1, 1, 255), 3838);
});

test("long text splits at UTF-8 character boundaries, words kept whole where they can be", () => {
  const text = "hello world ".repeat(10) + "長🎉x".repeat(50);
  for (const max of [4, 5, 7, 50, 4093]) {
    const pieces = wire.splitUtf8(text, max);
    assert.equal(pieces.join(""), text);
    for (const piece of pieces) {
      assert.ok(piece.length > 0);
      assert.ok(wire.utf8Length(piece) <= max, `${max}: ${piece}`);
      assert.equal(wire.utf8(piece).length, wire.utf8Length(piece));
    }
  }
  assert.deepEqual(wire.splitUtf8("hello world", 8), ["hello ", "world"]);
  assert.deepEqual(wire.splitUtf8("ééé", 4), ["éé", "é"]);
  assert.deepEqual(wire.splitUtf8("🎉🎉", 7), ["🎉", "🎉"]);
  assert.deepEqual(wire.splitUtf8("", 10), []);
  assert.throws(() => wire.splitUtf8("x", 3), RangeError);
  const big = "あ".repeat(5000);
  const pieces = wire.splitUtf8(big, wire.maxTextBytes(1, 32, 5));
  assert.deepEqual(pieces.map((p) => wire.utf8Length(p)), [4059, 4059, 4059, 2823]);
});

test("names: 1..255 bytes, no control characters", () => {
  assert.equal(wire.nameProblem("alice", "Name"), null);
  assert.match(wire.nameProblem("", "Name"), /empty/);
  assert.match(wire.nameProblem("a\tb", "Name"), /control/);
  assert.match(wire.nameProblem("あ".repeat(86), "Name"), /too long/);
  assert.equal(wire.nameProblem("あ".repeat(85), "Name"), null);
});

test("the socket address follows the page's scheme and host", () => {
  assert.equal(wire.socketURL({ protocol: "http:", host: "127.0.0.1:8080" }), "ws://127.0.0.1:8080/ws");
  assert.equal(wire.socketURL({ protocol: "https:", host: "chat.example" }), "wss://chat.example/ws");
});

test("refusals in plain words", () => {
  const ctx = { room: "r", user: "bob", passwordGiven: true };
  assert.equal(words.refusal(2, 401, "wrong password", ctx), "Wrong password.");
  assert.match(words.refusal(2, 401, "", { ...ctx, passwordGiven: false }), /needs a password/);
  assert.match(words.refusal(2, 404, "no such room", ctx), /no room named “r”/);
  assert.match(words.refusal(1, 409, "taken", ctx), /already exists/);
  assert.match(words.refusal(2, 409, "taken", ctx), /name “bob” is already taken/);
  assert.match(words.refusal(2, 503, "room r is full", ctx), /full.*room r is full/);
  assert.match(words.refusal(2, 403, "you are banned", ctx), /banned.*locked/);
  assert.match(words.refusal(2, 429, "", ctx), /Too many requests/);
  assert.match(words.refusal(2, 400, "bad json", ctx), /bad request.*bad json/);
  assert.match(words.refusal(2, 413, "", ctx), /too large/);
  assert.equal(words.refusalField(2, 401), "password");
  assert.equal(words.refusalField(1, 409), "room");
  assert.equal(words.refusalField(2, 409), "name");
});

test("notices in plain words", () => {
  assert.equal(words.noticeText({ event: "join", user: "bob" }, "alice"), "bob joined.");
  assert.equal(words.noticeText({ event: "leave", user: "bob", reason: "left" }, "alice"), "bob left.");
  assert.equal(words.noticeText({ event: "leave", user: "bob", reason: "timeout" }, "alice"), "bob left (timed out).");
  assert.match(words.noticeText({ event: "leave", user: "bob", reason: "banned" }, "alice"), /banned/);
  assert.match(words.noticeText({ event: "closed", reason: "host_left" }, "bob"), /host left/);
  assert.match(words.noticeText({ event: "closed", reason: "shutdown" }, "bob"), /shutting down/);
  assert.match(words.noticeText({ event: "disconnected", reason: "kicked" }, "bob"), /kicked/);
  assert.match(words.noticeText({ event: "error", code: "too_long" }, "bob"), /too long/);
  assert.match(words.noticeText({ event: "error", code: "rate_limited" }, "bob"), /too fast/);
  assert.equal(words.noticeText({ event: "host", user: "bob" }, "bob"), "You are now the host.");
  assert.match(words.noticeText({ event: "topic", topic: "", user: "a" }, "b"), /cleared/);
  assert.equal(words.noticeText({ event: "welcome" }, "b"), null);
  assert.equal(words.noticeText({ event: "something-new" }, "b"), null);
  assert.match(words.welcomeText({ room: "r", user: "bob", host: "alice", members: ["alice", "bob"] }), /Host: alice\. Here: alice, bob\./);
});

test("mentions: the whole name, any case, not inside another word", () => {
  assert.ok(words.mentions("hi Bob!", "bob"));
  assert.ok(words.mentions("@bob look", "bob"));
  assert.ok(!words.mentions("bobby", "bob"));
  assert.ok(!words.mentions("kebob", "bob"));
  assert.ok(words.mentions("a.b?", "a.b?"));
  assert.ok(!words.mentions("anything", ""));
  assert.ok(words.mentions("ボブさん、こんにちは", "ボブ"));
  assert.ok(words.mentions("hey 太郎!", "太郎"));
  assert.ok(!words.mentions("アリスさん", "ボブ"));
});

test("reconnect backoff: exponential, jittered, capped", () => {
  assert.equal(words.backoff(1, () => 0), 500);
  assert.equal(words.backoff(1, () => 1), 1000);
  assert.equal(words.backoff(3, () => 0.5), 3000);
  assert.equal(words.backoff(20, () => 1), 30000);
  for (let i = 1; i < 12; i++) {
    const d = words.backoff(i);
    assert.ok(d >= 500 && d <= 30000);
  }
});

test("typed commands", () => {
  assert.deepEqual(words.parseInput("hello"), { kind: "text", text: "hello" });
  assert.deepEqual(words.parseInput("//shrug"), { kind: "text", text: "/shrug" });
  assert.deepEqual(words.parseInput("/who"), { kind: "control", words: ["who"] });
  assert.deepEqual(words.parseInput("/leave"), { kind: "leave" });
  assert.deepEqual(words.parseInput("/msg bob hi there"), { kind: "control", words: ["msg", "bob", "hi there"], private: { user: "bob", text: "hi there" } });
  assert.deepEqual(words.parseInput("/topic"), { kind: "control", words: ["topic", ""] });
  assert.deepEqual(hex(wire.control(...words.parseInput("/topic").words)), "00746f70696320");
  assert.deepEqual(words.parseInput("/kick bob"), { kind: "control", words: ["kick", "bob"] });
  assert.equal(words.parseInput("/kick").kind, "bad");
  assert.equal(words.parseInput("/nope").kind, "bad");
});
