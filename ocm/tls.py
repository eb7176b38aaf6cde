"""
TLS for the TCRP port (secure mode): the server's certificate, the client's
check of it.  Twisted's TLS (pyOpenSSL), host names checked with
C{service_identity}.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PEM_END = b"-----END CERTIFICATE-----"


def pem_certificates(data: bytes) -> list[bytes]:
    """Every certificate of a PEM file, in order (the server's first, then its chain)."""
    blocks = []
    for part in data.split(PEM_END)[:-1]:
        start = part.find(b"-----BEGIN CERTIFICATE-----")
        if start >= 0:
            blocks.append(part[start:] + PEM_END + b"\n")
    return blocks


def server_options(cert_path: str, key_path: str) -> Any:
    """
    TLS options of the TCRP port from a PEM certificate file (the server's
    certificate, then any intermediates) and a PEM key file.  Raises
    ValueError with a plain message if they cannot be used.
    """
    from twisted.internet import ssl

    try:
        with open(cert_path, "rb") as f:
            certs = pem_certificates(f.read())
        with open(key_path, "rb") as f:
            key = f.read()
    except OSError as e:
        raise ValueError(f"cannot read {e.filename}: {e.strerror}") from None
    if not certs:
        raise ValueError(f"{cert_path} holds no PEM certificate")
    try:
        leaf = ssl.PrivateCertificate.loadPEM(key + b"\n" + certs[0])
        chain = [ssl.Certificate.loadPEM(c).original for c in certs[1:]]
        return ssl.CertificateOptions(privateKey=leaf.privateKey.original, certificate=leaf.original, extraCertChain=chain)
    except Exception as e:
        raise ValueError(f"{cert_path} and {key_path} are not a certificate and its key ({e.__class__.__name__})") from None


@dataclass(frozen=True)
class ClientTLS:
    """How the client connects to a secure-mode server: the name it checks, and the TLS options."""

    hostname: str
    creator: Any
    insecure: bool = False


def client_tls(hostname: str, ca_path: str | None = None, insecure: bool = False) -> ClientTLS:
    """L{ClientTLS} for C{hostname} (see L{client_options})."""
    return ClientTLS(hostname, client_options(hostname, ca_path, insecure), insecure)


def client_options(hostname: str, ca_path: str | None = None, insecure: bool = False) -> Any:
    """
    How the client checks the server: against C{ca_path} (PEM) if given,
    else the system's trust store; for C{hostname} (a name or an IP
    address, checked against the certificate's names).  C{insecure}: no
    check at all.
    """
    from twisted.internet import ssl

    if insecure:
        return ssl.CertificateOptions(verify=False)
    if ca_path:
        with open(ca_path, "rb") as f:
            trust: Any = ssl.Certificate.loadPEM(f.read())
    else:
        trust = ssl.platformTrust()
    return ssl.optionsForClientTLS(hostname, trustRoot=trust)
