"""Helpers of the DTLS tests: two in-memory engines handshaking, certificates made with trustme."""

from __future__ import annotations

import pathlib

from coapio.protocol.dtls import DtlsCredentials
from coapio.protocol.dtls.engine import Endpoint, Session

ADDRESS = ("127.0.0.1", 40000)


def pump(client: Session, server: Session, now: float = 0.0, rounds: int = 10) -> None:
    """Move datagrams between two sessions until neither has anything to send."""
    for _ in range(rounds):
        moved = False
        for source, sink in ((client, server), (server, client)):
            for datagram in source.datagrams_to_send():
                moved = True
                sink.receive(datagram, now)
        if not moved:
            return


def handshake(client_endpoint: Endpoint, server_endpoint: Endpoint, psk: object = None,
              host: str = "127.0.0.1", now: float = 0.0) -> tuple[Session, Session]:
    """A client session, taken through the cookie exchange to a server session, then handshaken."""
    client = client_endpoint.connect(host, psk, now)  # type: ignore[arg-type]
    hello = client.datagrams_to_send()[0]
    session, reply = server_endpoint.accept(hello, ADDRESS, now)
    assert session is None and reply is not None
    client.receive(reply, now)
    hello = client.datagrams_to_send()[0]
    session, reply = server_endpoint.accept(hello, ADDRESS, now)
    assert session is not None and reply is None
    pump(client, session, now)
    return client, session


def make_certificates(directory: pathlib.Path, trustme: object, names: tuple[str, ...] = ("127.0.0.1",
                                                                                         "localhost"),
                      prefix: str = "") -> dict[str, str]:
    """A CA, a server certificate for ``names`` and a client certificate, as PEM files."""
    ca = trustme.CA()  # type: ignore[attr-defined]
    server = ca.issue_cert(*names)
    client = ca.issue_cert("client.example", common_name="client.example")
    files = {
        "ca": directory / f"{prefix}ca.pem",
        "cert": directory / f"{prefix}server.pem",
        "key": directory / f"{prefix}server.key",
        "client_cert": directory / f"{prefix}client.pem",
        "client_key": directory / f"{prefix}client.key",
    }
    ca.cert_pem.write_to_path(str(files["ca"]))
    server.private_key_pem.write_to_path(str(files["key"]))
    with open(files["cert"], "wb") as f:
        for blob in server.cert_chain_pems:
            f.write(blob.bytes())
    client.private_key_pem.write_to_path(str(files["client_key"]))
    with open(files["client_cert"], "wb") as f:
        for blob in client.cert_chain_pems:
            f.write(blob.bytes())
    return {name: str(path) for name, path in files.items()}


def credentials(**kwargs: object) -> DtlsCredentials:
    return DtlsCredentials(**kwargs)  # type: ignore[arg-type]


async def until(condition: object, interval: float = 0.01) -> None:
    """Return once ``condition()`` holds: state another task changes with no event to wait on (a
    session's end, a datagram processed). Callers bound the wait; this polls."""
    import anyio

    while not condition():  # type: ignore[operator]  # noqa: ASYNC110 - polling state, bounded by callers
        await anyio.sleep(interval)
