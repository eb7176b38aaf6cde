"""
The client's command line and typed addresses: parsing only, no I/O.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

EPILOG = """\
exit status: 0 left normally, 1 cannot reach the server, 2 usage,
3 refused by the server (wrong password, no such room, name taken, full;
with --tcp-only, no TCP tunnel), 4 the room closed (host left or server
shutdown), 5 disconnected by the server, or the server stopped answering
(no pong to the client's pings), and could not rejoin (with --no-rejoin:
did not try), 6 no reply over UDP (and no TCP tunnel to fall back on).
"""


class BadOption(Exception):
    """A file a flag names cannot be used; the message is one line, for the user."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The client's command line."""
    parser = argparse.ArgumentParser(
        prog="python -m ocm.client",
        description="Chat in ocm rooms. Interactive on a terminal; with flags and piped input, scriptable.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", help="server address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="server TCP port (default 9000)")
    parser.add_argument("--name", help="your username")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--create", metavar="ROOM", help="create ROOM and host it")
    what.add_argument("--join", metavar="ROOM", help="join ROOM")
    what.add_argument("--list", action="store_true", help="print the rooms and exit")
    what.add_argument("--lobby", metavar="PORT", type=int, help="chat in the stage-1 open lobby on UDP PORT")
    parser.add_argument("--capacity", type=int, help="with --create: most members, the host included")
    parser.add_argument("--password-file", help="read the room password from this file (first line)")
    parser.add_argument("--password", help="the room password (visible in ps: prefer OCM_PASSWORD or --password-file)")
    parser.add_argument("--no-rejoin", dest="rejoin", action="store_false", help="do not join again after a disconnection or when the server stops answering")
    parser.add_argument("--timeout", type=float, default=30.0, help="lobby only: the server's timeout, to pace keepalives")
    parser.add_argument("--history", type=int, metavar="N", help="with --create: keep the last N messages for newcomers (if the server keeps history)")
    parser.add_argument("--tcp-only", action="store_true", help="chat through the TCP connection from the start (a server with --tunnel); otherwise only when UDP gets no reply")
    parser.add_argument("--tls", action="store_true", help="secure mode: TLS to the server, sealed chat (needs a server started with --tls-cert)")
    parser.add_argument("--ca", metavar="PEM", help="with --tls: trust the server's certificate if this CA (or certificate) signed it, not the system's store")
    parser.add_argument("--insecure", action="store_true", help="with --tls: do not check the server's certificate (says so on every run)")
    args = parser.parse_args(argv)
    if args.capacity is not None and args.capacity < 1:
        parser.error("--capacity must be at least 1")
    if args.history is not None and args.history < 0:
        parser.error("--history must be at least 0")
    if (args.ca or args.insecure) and not args.tls:
        parser.error("--ca and --insecure go with --tls")
    if args.ca and args.insecure:
        parser.error("--ca and --insecure contradict each other")
    return args


def password_of(args: argparse.Namespace) -> str | None:
    """
    The password from --password-file, OCM_PASSWORD or --password; None if
    none given.  Raises L{BadOption} if the file cannot be read.
    """
    if args.password_file:
        try:
            with open(args.password_file, encoding="utf-8") as f:
                return f.readline().rstrip("\r\n")
        except OSError as e:
            raise BadOption(f"--password-file {args.password_file}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise BadOption(f"--password-file {args.password_file}: not UTF-8 text") from None
    if "OCM_PASSWORD" in os.environ:
        return os.environ["OCM_PASSWORD"]
    return args.password  # type: ignore[no-any-return]


def parse_server(text: str, default_port: int = 9000) -> tuple[str, int]:
    """
    C{host}, C{host:port}, C{[v6]:port} or a bare IPv6 address, as
    (host, port).
    """
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:  # a name, an IPv4 address, or a bare IPv6 address
        host, port_text = text, ""
    if not port_text:
        return host or "127.0.0.1", default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{port_text!r} is not a port number")
    return host or "127.0.0.1", int(port_text)


def tls_of(args: argparse.Namespace, host: str, out: Callable[[str], None]) -> Any:
    """
    Secure mode's TLS for C{host} (the name the user gave, which the
    certificate must name), or None without --tls; --insecure says so.
    Raises L{BadOption} if the --ca file cannot be read or holds no PEM
    certificate.
    """
    if not args.tls:
        return None
    from OpenSSL.crypto import Error as OpenSSLError

    from ocm.tls import client_tls, pem_certificates

    if args.insecure:
        out("* --insecure: the server's certificate is NOT checked; anyone on the path can read and join")
    if args.ca:
        try:
            with open(args.ca, "rb") as f:
                if not pem_certificates(f.read()):
                    raise BadOption(f"--ca {args.ca}: not a PEM certificate")
        except OSError as e:
            raise BadOption(f"--ca {args.ca}: {e.strerror}") from None
    try:
        return client_tls(host, args.ca, args.insecure)
    except OpenSSLError:  # a PEM block that does not decode
        raise BadOption(f"--ca {args.ca}: not a PEM certificate") from None
