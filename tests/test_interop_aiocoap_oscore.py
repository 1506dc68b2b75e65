"""coapio's OSCORE against aiocoap's, sans-IO: what one protects, the other unprotects, both ways.

Both sides load the same context directories (aiocoap's ``FilesystemSecurityContext`` and coapio's
:func:`load_context_directory`), which also proves the credentials and ``sequence.json`` formats match.
Messages travel as encoded bytes; no socket is involved (end-to-end tests come with the runtime).
"""

from __future__ import annotations

import json
import os

import pytest
from conftest import require_interop

from coapio.protocol.codes import Code, Type
from coapio.protocol.message import Message
from coapio.protocol.oscore import (
    SEQUENCE_FILE,
    OscoreOption,
    ReplayDetected,
    ReplayWindowUninitialized,
    SecurityContext,
    load_context_directory,
    protect_request,
    unprotect_request,
    unprotect_response,
)

aiocoap = require_interop("aiocoap")
aoscore = require_interop("aiocoap.oscore")

pytestmark = pytest.mark.interop

SECRET = "0102030405060708090a0b0c0d0e0f10"


def make_dirs(tmp: str, *, id_context: str | None = None, algorithm: str | None = None) -> tuple[str, str]:
    """A client and a server context directory in aiocoap's format (keys split over two files)."""
    dirs = []
    for role, sender, recipient in (("client", "", "01"), ("server", "01", "")):
        directory = os.path.join(tmp, role)
        os.makedirs(directory)
        settings: dict[str, object] = {"sender-id_hex": sender, "recipient-id_hex": recipient,
                                       "salt_hex": "9e7ca92223786340"}
        if id_context is not None:
            settings["id-context_hex"] = id_context
        if algorithm is not None:
            settings["algorithm"] = algorithm
        with open(os.path.join(directory, "settings.json"), "w") as f:
            json.dump(settings, f)
        with open(os.path.join(directory, "secret.json"), "w") as f:
            json.dump({"secret_hex": SECRET}, f)
        dirs.append(directory)
    return dirs[0], dirs[1]


def to_aiocoap(message: Message) -> object:
    return aiocoap.Message.decode(message.encode())


def from_aiocoap(message: object, mid: int = 1, token: bytes = b"tk") -> Message:
    message.mid = mid  # type: ignore[attr-defined]
    message.token = token  # type: ignore[attr-defined]
    message.mtype = aiocoap.CON  # type: ignore[attr-defined]
    return Message.decode(message.encode())  # type: ignore[attr-defined]


def coapio_get(path: tuple[str, ...] = ("sensors", "temp")) -> Message:
    msg = Message(Type.CON, Code.GET, 0x1234, b"tok", payload=b"")
    msg.opt.uri_host = "localhost"
    msg.opt.uri_path = path
    msg.opt.uri_query = ("unit=C",)
    return msg


@pytest.fixture
def dirs(tmp_path: object) -> tuple[str, str]:
    return make_dirs(str(tmp_path))


def _release(*contexts: object) -> None:
    for ctx in contexts:
        if isinstance(ctx, SecurityContext):
            ctx.close()
        else:
            ctx._destroy()  # type: ignore[attr-defined]  # aiocoap's way to store and unlock


@pytest.mark.parametrize("variant", ["plain", "id-context", "A128GCM", "ChaCha20/Poly1305"])
def test_coapio_client_aiocoap_server(tmp_path: object, variant: str) -> None:
    kw = {"id_context": "37cbf3210017a2d3"} if variant == "id-context" else {}
    if variant in ("A128GCM", "ChaCha20/Poly1305"):
        kw = {"algorithm": variant}
    client_dir, server_dir = make_dirs(str(tmp_path), **kw)
    client = load_context_directory(client_dir)
    server = aoscore.FilesystemSecurityContext(server_dir)
    try:
        request = coapio_get()
        request.payload = b"request body"
        request.code = Code.PUT
        outer, binding = protect_request(client, request)
        plain, request_id = server.unprotect(to_aiocoap(outer))
        assert plain.code == aiocoap.PUT
        assert plain.opt.uri_path == ("sensors", "temp") and plain.opt.uri_query == ("unit=C",)
        assert plain.payload == b"request body"

        response = aiocoap.Message(code=aiocoap.CHANGED, payload=b"stored", content_format=0)
        protected, _ = server.protect(response, request_id)
        got = unprotect_response(binding, from_aiocoap(protected))
        assert got.code is Code.CHANGED and got.payload == b"stored" and got.opt.content_format == 0
    finally:
        _release(client, server)


@pytest.mark.parametrize("variant", ["plain", "id-context"])
def test_aiocoap_client_coapio_server(tmp_path: object, variant: str) -> None:
    kw = {"id_context": "37cbf3210017a2d3"} if variant == "id-context" else {}
    client_dir, server_dir = make_dirs(str(tmp_path), **kw)
    client = aoscore.FilesystemSecurityContext(client_dir)
    server = load_context_directory(server_dir)
    try:
        request = aiocoap.Message(code=aiocoap.POST, uri_path=["actuators", "led"], uri_host="localhost",
                                  payload=b"on", content_format=0)
        outer, request_id = client.protect(request)
        plain, protector = unprotect_request(server, from_aiocoap(outer))
        assert plain.code is Code.POST and plain.opt.uri_path == ("actuators", "led")
        assert plain.opt.uri_host == "localhost" and plain.payload == b"on"

        response = Message(Type.ACK, Code.CONTENT, 1, b"tk", payload=b"led is on")
        response.opt.max_age = 10
        got, _ = client.unprotect(to_aiocoap(protector.protect(response)), request_id)
        assert got.code == aiocoap.CONTENT and got.payload == b"led is on" and got.opt.max_age == 10
        # a second response to the same request carries its own Partial IV; aiocoap accepts it too
        again, _ = client.unprotect(to_aiocoap(protector.protect(response)), request_id)
        assert again.payload == b"led is on"
    finally:
        _release(client, server)


def test_aiocoap_replay_is_refused_by_coapio(dirs: tuple[str, str]) -> None:
    client = aoscore.FilesystemSecurityContext(dirs[0])
    server = load_context_directory(dirs[1])
    try:
        outer, _ = client.protect(aiocoap.Message(code=aiocoap.GET, uri_path=["x"]))
        wire = from_aiocoap(outer)
        unprotect_request(server, wire)
        with pytest.raises(ReplayDetected):
            unprotect_request(server, Message.decode(wire.encode()))
    finally:
        _release(client, server)


def test_observe_both_ways(dirs: tuple[str, str]) -> None:
    # aiocoap observes a coapio resource
    client = aoscore.FilesystemSecurityContext(dirs[0])
    server = load_context_directory(dirs[1])
    try:
        outer, request_id = client.protect(aiocoap.Message(code=aiocoap.GET, uri_path=["obs"], observe=0))
        wire = from_aiocoap(outer)
        assert wire.code is Code.FETCH and wire.opt.observe == 0
        plain, protector = unprotect_request(server, wire)
        assert plain.opt.observe == 0
        seen = []
        for n in (2, 3):
            note = Message(Type.NON, Code.CONTENT, n, b"tk", payload=b"v%d" % n)
            note.opt.observe = n
            got, _ = client.unprotect(to_aiocoap(protector.protect(note)), request_id)
            assert got.code == aiocoap.CONTENT and got.opt.observe is not None
            seen.append((got.opt.observe, got.payload))
        assert [p for _, p in seen] == [b"v2", b"v3"] and seen[0][0] < seen[1][0]
    finally:
        _release(client, server)

    # coapio observes an aiocoap resource (aiocoap's first notification reuses the request's nonce)
    server2 = aoscore.FilesystemSecurityContext(dirs[1])
    client2 = load_context_directory(dirs[0])
    try:
        request = coapio_get(("obs",))
        request.opt.observe = 0
        outer2, binding = protect_request(client2, request)
        plain2, request_id2 = server2.unprotect(to_aiocoap(outer2))
        assert plain2.opt.observe == 0
        values = []
        for n in (1, 2, 3):
            note = aiocoap.Message(code=aiocoap.CONTENT, observe=n, payload=b"n%d" % n)
            protected, _ = server2.protect(note, request_id2)
            got = unprotect_response(binding, from_aiocoap(protected))
            assert got.payload == b"n%d" % n and got.opt.observe is not None
            values.append(got.opt.observe)
        assert values == sorted(set(values))
    finally:
        _release(server2, client2)


def test_aiocoap_b12_echo_recovery_with_a_coapio_client(dirs: tuple[str, str]) -> None:
    """aiocoap's server restarted after a crash ("received": "unknown") challenges with a protected
    4.01 Echo; coapio's client reads it and repeats the request, which aiocoap then accepts."""
    with open(os.path.join(dirs[1], SEQUENCE_FILE), "w") as f:
        json.dump({"next-to-send": 100, "received": "unknown"}, f)
    server = aoscore.FilesystemSecurityContext(dirs[1])
    client = load_context_directory(dirs[0])
    try:
        outer, binding = protect_request(client, coapio_get())
        with pytest.raises(aoscore.ReplayErrorWithEcho) as info:
            server.unprotect(to_aiocoap(outer))
        challenge = unprotect_response(binding, from_aiocoap(info.value.to_message()))
        assert challenge.code is Code.UNAUTHORIZED and challenge.opt.echo
        repeat = coapio_get()
        repeat.opt.echo = challenge.opt.echo
        outer2, _ = protect_request(client, repeat)
        plain, _ = server.unprotect(to_aiocoap(outer2))
        assert plain.opt.uri_path == ("sensors", "temp")
    finally:
        _release(server, client)


def test_coapio_b12_echo_recovery_with_an_aiocoap_client(dirs: tuple[str, str]) -> None:
    with open(os.path.join(dirs[1], SEQUENCE_FILE), "w") as f:
        json.dump({"next-to-send": 100, "received": "unknown"}, f)
    server = load_context_directory(dirs[1])
    client = aoscore.FilesystemSecurityContext(dirs[0])
    assert not server.replay_window_initialized
    try:
        outer, request_id = client.protect(aiocoap.Message(code=aiocoap.GET, uri_path=["x"]))
        with pytest.raises(ReplayWindowUninitialized) as info:
            unprotect_request(server, from_aiocoap(outer))
        challenge = Message(Type.ACK, Code.UNAUTHORIZED, 1, b"tk")
        challenge.opt.echo = b"echo-1234"
        protected = info.value.protector.protect(challenge)
        assert OscoreOption.decode(protected.opt.oscore or b"").sequence_number == 100
        got, _ = client.unprotect(to_aiocoap(protected), request_id)
        assert got.code == aiocoap.UNAUTHORIZED and got.opt.echo == b"echo-1234"
        repeat = aiocoap.Message(code=aiocoap.GET, uri_path=["x"], echo=got.opt.echo)
        outer2, request_id2 = client.protect(repeat)
        with pytest.raises(ReplayWindowUninitialized) as info2:
            unprotect_request(server, from_aiocoap(outer2))
        assert info2.value.request.opt.echo == b"echo-1234"
        server.initialize_replay_window(info2.value.protector)
        ok = Message(Type.ACK, Code.CONTENT, 2, b"tk", payload=b"ok")
        answer, _ = client.unprotect(to_aiocoap(info2.value.protector.protect(ok)), request_id2)
        assert answer.payload == b"ok"
    finally:
        _release(server, client)


def test_sequence_json_moves_between_the_implementations(dirs: tuple[str, str]) -> None:
    """coapio continues where aiocoap stopped, and the other way round: no sequence number is reused."""
    a = aoscore.FilesystemSecurityContext(dirs[0])
    for _ in range(5):
        a.protect(aiocoap.Message(code=aiocoap.GET, uri_path=["x"]))
    a._destroy()
    c = load_context_directory(dirs[0])
    outer, _ = protect_request(c, coapio_get())
    first = OscoreOption.decode(outer.opt.oscore or b"").sequence_number
    assert first is not None and first >= 5
    c.close()
    a2 = aoscore.FilesystemSecurityContext(dirs[0])
    try:
        outer2, _ = a2.protect(aiocoap.Message(code=aiocoap.GET, uri_path=["x"]))
        assert OscoreOption.decode(from_aiocoap(outer2).opt.oscore or b"").sequence_number > first
    finally:
        a2._destroy()


def test_aiocoap_refuses_a_coapio_request_with_the_wrong_key(tmp_path: object) -> None:
    _, server_dir = make_dirs(str(tmp_path))
    wrong = SecurityContext(master_secret=b"not the secret!!", sender_id=b"", recipient_id=b"\x01",
                            master_salt=bytes.fromhex("9e7ca92223786340"))
    server = aoscore.FilesystemSecurityContext(server_dir)
    try:
        outer, _ = protect_request(wrong, coapio_get())
        with pytest.raises(aoscore.ProtectionInvalid):
            server.unprotect(to_aiocoap(outer))
    finally:
        _release(server)
