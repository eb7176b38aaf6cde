"""The cluster's pub/sub batch codec and the registry's value encodings (pure)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial import unittest

from ocm.cluster import wire as cw
from ocm.cluster.address import RedisAddress
from ocm.cluster.registry import decode_password, encode_password, pairs
from ocm.cluster.scripts import room_key
from ocm.passwords import PasswordHash

names = st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=60).filter(lambda s: len(s.encode()) <= 255)
ids = st.text("0123456789abcdef", min_size=16, max_size=16).map(str.encode)
records = st.lists(st.tuples(st.sampled_from(sorted(cw.KINDS)), names, ids, st.binary(max_size=4094)), max_size=20)


class Batches(unittest.TestCase):
    """Batches parse back to what was put in; cut or junk ones raise, never more."""

    @given(names, records)
    def test_round_trip(self, origin: str, recs: list[tuple[int, str, bytes, bytes]]) -> None:
        data = cw.batch_header(origin, 2**60 + 7, 1_700_000_000_123) + b"".join(cw.record(k, r.encode(), i, b) for k, r, i, b in recs)
        batch = cw.parse_batch(data)
        self.assertEqual((batch.origin, batch.generation, batch.sent_at), (origin, 2**60 + 7, 1_700_000_000_123))
        self.assertEqual(list(batch.records), [(k, r.encode(), i, b) for k, r, i, b in recs])

    def test_exact_bytes(self) -> None:
        """The layout of docs/cluster.rst, byte for byte."""
        data = cw.batch_header("a", 5, 256) + cw.record(cw.CHAT, b"r", cw.room_id("0123456789abcdef"), b"\x03bob" + b"hi")
        self.assertEqual(data, b"\x01a" + b"\x00" * 7 + b"\x05" + b"\x00" * 6 + b"\x01\x00" + b"C\x01r0123456789abcdef\x00\x06\x03bobhi")
        self.assertEqual(cw.gone_record("b", 1), b"G\x00" + b"0" * 16 + b"\x00\x09" + b"\x00" * 7 + b"\x01b")
        self.assertRaises(ValueError, cw.room_id, "short")
        self.assertEqual(cw.gone_body("b", 258), b"\x00" * 6 + b"\x01\x02b")
        self.assertEqual(cw.parse_gone(cw.gone_body("ノード", 2**52)), ("ノード", 2**52))
        self.assertEqual(cw.left_body("bob", "timeout"), b"\x07timeoutbob")
        self.assertEqual(cw.sync_body([("a", True), ("bc", False)], True), b"\x01\x01\x01a\x00\x02bc")
        self.assertEqual(cw.resp_command(b"PUBLISH", b"ch", b"x"), b"*3\r\n$7\r\nPUBLISH\r\n$2\r\nch\r\n$1\r\nx\r\n")
        self.assertEqual(cw.channel("nodé"), "ocm:node:nodé".encode())

    def test_unknown_kind_skipped(self) -> None:
        rid = b"0123456789abcdef"
        data = cw.batch_header("a") + cw.record(0x7A, b"r", rid, b"future") + cw.record(cw.CLOSED, b"r", rid, b"host_left")
        self.assertEqual(list(cw.parse_batch(data).records), [(cw.CLOSED, b"r", rid, b"host_left")])

    @given(names, records, st.data())
    def test_cut_short_raises_unless_on_a_record_boundary(self, origin: str, recs: list[tuple[int, str, bytes, bytes]], data: st.DataObject) -> None:
        """
        A batch cut short raises, except where the cut falls between two
        records (a batch has no count): then it parses to a strict prefix of
        the records, never to anything else.
        """
        whole = cw.batch_header(origin) + b"".join(cw.record(k, r.encode(), i, b) for k, r, i, b in recs)
        cut = data.draw(st.integers(0, len(whole) - 1))
        boundaries = {len(cw.batch_header(origin)) + sum(len(cw.record(k, r.encode(), i, b)) for k, r, i, b in recs[:n]) for n in range(len(recs))}
        try:
            batch = cw.parse_batch(whole[:cut])
            got_origin, got = batch.origin, list(batch.records)
        except (cw.ClusterWireError, UnicodeDecodeError):
            self.assertNotIn(cut, boundaries)
            return
        self.assertIn(cut, boundaries)
        self.assertEqual(got_origin, origin)
        self.assertEqual(got, [(k, r.encode(), i, b) for k, r, i, b in recs][: len(got)])
        self.assertLess(len(got), len(recs))

    def test_sync_and_left_parse(self) -> None:
        self.assertEqual(cw.parse_sync(cw.sync_body([("ア", True)], False)), ([("ア", True)], False))
        self.assertEqual(cw.parse_left(cw.left_body("ボブ", "left")), ("ボブ", "left"))
        for bad in (b"", b"\x01\x01\x05ab"):
            self.assertRaises(cw.ClusterWireError, cw.parse_sync, bad)
        self.assertRaises(cw.ClusterWireError, cw.parse_left, b"\x09left")

    def test_node_names(self) -> None:
        self.assertRaises(ValueError, cw.batch_header, "")
        self.assertRaises(ValueError, cw.batch_header, "x" * 256)


class Registry(unittest.TestCase):
    """What the registry stores."""

    def test_password_is_the_hash(self) -> None:
        h = PasswordHash(b"\x00\x01", b"\xff" * 4, "scrypt")
        self.assertEqual(encode_password(h), "scrypt$0001$ffffffff")
        self.assertEqual(decode_password(encode_password(h)), h)
        self.assertIsNone(decode_password(encode_password(None)))

    def test_keys(self) -> None:
        self.assertEqual(room_key("部屋", "room"), "ocm:{e983a8e5b18b}:room")
        self.assertEqual(pairs(["a", "1", "b", "2"]), [("a", "1"), ("b", "2")])

    def test_urls(self) -> None:
        self.assertEqual(RedisAddress.parse("redis://127.0.0.1:6380/2"), RedisAddress("127.0.0.1", 6380, 2, None))
        self.assertEqual(RedisAddress.parse("redis://:s%40cret@h"), RedisAddress("h", 6379, 0, "s@cret"))
        for bad in ("http://h", "redis://", "redis://h/x"):
            self.assertRaises(ValueError, RedisAddress.parse, bad)


class ClusterOptions(unittest.TestCase):
    """C{--redis} and C{--node} on the command line."""

    def test_options(self) -> None:
        from twisted.python import usage

        from ocm.tap import Options

        options = Options()
        options.parseOptions(["--redis", "redis://127.0.0.1:7000/1", "--node", "n1"])
        self.assertEqual(options["redis-address"], RedisAddress("127.0.0.1", 7000, 1, None))
        options = Options()
        options.parseOptions(["--redis", "rediss://h:7001", "--redis-ca", "ca.pem"])
        self.assertEqual(options["redis-address"], RedisAddress("h", 7001, 0, None, True, "ca.pem"))
        for argv in (
            ["--node", "n1"],
            ["--redis", "http://x"],
            ["--redis", "redis://h", "--node", "x" * 201],
            ["--redis", "redis://h", "--redis-ca", "ca.pem"],
            ["--redis-ca", "ca.pem"],
        ):
            self.assertRaises(usage.UsageError, Options().parseOptions, argv)

    def test_no_redis_no_cluster(self) -> None:
        """Without --redis the service is the single node of before: no cluster, local rooms."""
        from ocm.tcrp.registry import LocalRegistry
        from ocm.rooms import Peers
        from ocm.tap import Options, makeService

        options = Options()
        options.parseOptions(["--tcp", "0", "--udp", "0"])
        top = makeService(options)
        self.assertFalse(hasattr(top, "cluster"))
        self.assertIsInstance(top.tcrp.registry, LocalRegistry)  # type: ignore[attr-defined]
        self.assertIs(type(top.rooms.peers), Peers)  # type: ignore[attr-defined]


class SentinelUrls(unittest.TestCase):
    """C{redis+sentinel://} names the sentinels and the master."""

    def test_parse(self) -> None:
        a = RedisAddress.parse("redis+sentinel://:pw@h1:26380,h2/mymaster/3")
        self.assertEqual((a.sentinels, a.master, a.db, a.password, a.host, a.port), ((("h1", 26380), ("h2", 26379)), "mymaster", 3, "pw", "h1", 26380))
        self.assertEqual(RedisAddress.parse("redis+sentinel://10.0.0.5/chat").sentinels, (("10.0.0.5", 26379),))
        for bad in ("redis+sentinel://h1", "redis+sentinel://h1:x/m", "redis+sentinel://h1/m/x", "redis+sentinel:///m"):
            self.assertRaises(ValueError, RedisAddress.parse, bad)

    def test_target(self) -> None:
        from ocm.cluster.sentinel import SentinelTarget

        target = RedisAddress.parse("redis+sentinel://h1/m").target(None)
        self.assertIsInstance(target, SentinelTarget)
        self.assertIsNone(target.current())
        moved: list[int] = []
        target.moved = lambda: moved.append(1)
        target.found(("10.0.0.1", 6379))
        self.assertEqual((target.current(), moved), (("10.0.0.1", 6379), []))
        target.switched(b"other 10.0.0.1 6379 10.0.0.9 6379")
        target.switched(b"m 10.0.0.1 6379 10.0.0.2 6380")
        self.assertEqual((target.current(), moved, target.describe()), (("10.0.0.2", 6380), [1], "10.0.0.2:6380"))
