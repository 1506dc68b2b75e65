"""The ETSI CoAP#4 test descriptions (TD_COAP_CORE_01-23, 31; TD_COAP_LINK_01-09) against
``examples/plugtest_server.py``, driven by libcoap's ``coap-client-notls``.

The server runs in-process (a :class:`coapio.Context` serving ``build_site()`` on an ephemeral port), so a
test can also look at its state. Each check follows the TD's message sequence as far as the client can see
it: libcoap's ``-v 7`` log lists every PDU it sent and received (type, code, message ID, token, options).
Where coap-client-notls cannot express a step (an empty token, a CoAP ping, a dropped ACK after it has
exited), the test sends hand-made datagrams or uses coapio's own client, and says so. The lossy TDs
(CoAP_CFG_LOSSY) put a relay between client and server that drops chosen datagrams, as the TDs' gateway does.
"""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
import trio
import trio.testing
from conftest import require_binary
from etsi_support import (
    C2S,
    PLUGTEST_PATH,
    S2C,
    ClientRun,
    Datagram,
    Pdu,
    Plugtest,
    RawPeer,
    coap_client,
    drop_first,
    free_udp_port,
    gateway,
    load_plugtest,
    plugtest_server,
)

from coapio import Code, ContentFormat, Context, Message, TransportTuning, Type
from coapio.protocol.linkformat import Link, parse_links

pytestmark = pytest.mark.interop

require_binary("coap-client-notls")
plugtest = load_plugtest()

TEXT_PLAIN = "text/plain"
LINK_FORMAT = "application/link-format"
XML = "application/xml"
#: The server's retransmission timeout in the lossy TDs: short, so that a dropped separate response costs
#: half a second, not two.
LOSSY_SERVER_TUNING = TransportTuning(ack_timeout=0.5)


# --- checks shared by the TDs -------------------------------------------------------------------------


def piggybacked(run: ClientRun, method: str, code: str) -> Pdu:
    """A CON request answered on its ACK: same message ID and token (the TDs' SAME_MID_TOKEN)."""
    request, response = run.request, run.response
    assert (request.type, request.code) == ("CON", method), run.transcript
    assert 1 <= len(request.token) <= 8, run.transcript
    assert response.type == "ACK", run.transcript
    assert response.code == code, run.transcript
    assert (response.mid, response.token) == (request.mid, request.token), run.transcript
    return response


def non_response(run: ClientRun, method: str, code: str) -> Pdu:
    """A NON request answered by a NON response with its token (SMID, SAME_TOKEN) and no ACK at all."""
    request, response = run.request, run.response
    assert (request.type, request.code) == ("NON", method), run.transcript
    assert response.type == "NON", run.transcript
    assert response.code == code, run.transcript
    assert response.token == request.token, run.transcript
    assert not [p for p in run.received if p.type == "ACK"], run.transcript
    return response


def separate(run: ClientRun, *, token: bytes | None = None) -> Pdu:
    """TD_COAP_CORE_09 steps 2-5: the empty ACK (same MID), then the CON 2.05 (new MID, same token,
    Content-Format, payload), acknowledged by the client with the server's MID."""
    request = run.request
    assert (request.type, request.code) == ("CON", "GET"), run.transcript
    assert request.option("Uri-Path") == ["separate"], run.transcript
    if token is not None:
        assert request.token == token, run.transcript
    received = run.received
    assert len(received) == 2, run.transcript
    ack, response = received
    assert (ack.type, ack.code, ack.mid, ack.token) == ("ACK", "0.00", request.mid, b""), run.transcript
    assert (response.type, response.code) == ("CON", "2.05"), run.transcript
    assert response.mid != request.mid, run.transcript
    assert response.token == request.token, run.transcript
    assert response.option("Content-Format") == [TEXT_PLAIN], run.transcript
    assert run.payload.startswith(b"separate response"), run.transcript
    client_acks = [p for p in run.sent if p.type == "ACK"]
    assert [(p.code, p.mid) for p in client_acks] == [("0.00", response.mid)], run.transcript
    return response


def hrefs(links: list[Link]) -> set[str]:
    return {link.href for link in links}


async def well_known_core(server: Plugtest, query: str = "") -> tuple[ClientRun, list[Link]]:
    """GET /.well-known/core[?query]. The full listing is larger than a block, so it may come in Block2
    blocks (RFC 7959 §2.4): then every block is fetched by its own piggy-backed exchange."""
    uri = server.uri("/.well-known/core" + (f"?{query}" if query else ""))
    run = await coap_client("-m", "get", uri=uri)
    requests = [p for p in run.sent if p.is_request]
    responses = [p for p in run.received if p.is_response]
    assert len(requests) == len(responses) >= 1, run.transcript
    for request, response in zip(requests, responses, strict=True):
        assert (request.type, request.code) == ("CON", "GET"), run.transcript
        assert request.option("Uri-Query") == requests[0].option("Uri-Query"), run.transcript
        assert (response.type, response.code) == ("ACK", "2.05"), run.transcript
        assert (response.mid, response.token) == (request.mid, request.token), run.transcript
        assert response.option("Content-Format") == [LINK_FORMAT], run.transcript
    return run, parse_links(run.payload)


# --- TD_COAP_CORE_01-08: the four methods, CON and NON ------------------------------------------------

BASIC = [
    ("TD_COAP_CORE_01", "get", True),
    ("TD_COAP_CORE_02", "delete", True),
    ("TD_COAP_CORE_03", "put", True),
    ("TD_COAP_CORE_04", "post", True),
    ("TD_COAP_CORE_05", "get", False),
    ("TD_COAP_CORE_06", "delete", False),
    ("TD_COAP_CORE_07", "put", False),
    ("TD_COAP_CORE_08", "post", False),
]
SUCCESS = {"get": "2.05", "delete": "2.02", "put": "2.04", "post": "2.01"}


@pytest.mark.parametrize(("td", "method", "confirmable"), BASIC, ids=[b[0] for b in BASIC])
async def test_core_01_to_08_methods_on_test(td: str, method: str, confirmable: bool) -> None:
    """GET 2.05 with Content-Format and payload; DELETE 2.02; PUT 2.04 (stored); POST 2.01 with
    Location-Path. CON requests get piggy-backed responses, NON requests NON responses and no ACK."""
    payload = f"{td} payload"
    args = ["-m", method]
    if method in ("put", "post"):
        args += ["-t", "0", "-e", payload]
    if not confirmable:
        args.append("-N")
    async with plugtest_server() as server:
        resource = server.resource("/test")
        if method == "delete":
            resource.content = b"changed before the DELETE"
        run = await coap_client(*args, uri=server.uri("/test"))
        method_code = method.upper()
        check = piggybacked if confirmable else non_response
        response = check(run, method_code, SUCCESS[method])
        assert run.request.option("Uri-Path") == ["test"], run.transcript
        assert len(run.request.token) >= 1, run.transcript
        # "Server displays the received information": the resource saw exactly one request.
        assert resource.requests == {method_code: 1}
        if method == "get":
            assert response.option("Content-Format") == [TEXT_PLAIN], run.transcript
            assert run.payload == resource.INITIAL, run.transcript
        elif method == "put":
            assert run.request.option("Content-Format") == [TEXT_PLAIN], run.transcript
            assert resource.content == payload.encode()
            assert resource.content_format == ContentFormat.TEXT_PLAIN
        elif method == "post":
            assert response.option("Location-Path") == ["location1", "location2", "location3"], run.transcript
        else:
            assert resource.content == resource.INITIAL
        # CFONE: a Content-Format only where there is a payload.
        if not run.payload:
            assert response.option("Content-Format") == [], run.transcript


# --- TD_COAP_CORE_09, 11, 17: separate responses ------------------------------------------------------


async def test_core_09_separate_response_con() -> None:
    """CON GET /separate: an empty ACK first, then the 2.05 as a CON with a new MID, ACKed by the client."""
    async with plugtest_server() as server:
        run = await coap_client("-m", "get", uri=server.uri("/separate"))
        separate(run)
        assert server.resource("/separate").requests == {"GET": 1}


async def test_core_10_get_with_token() -> None:
    """CON GET /test with a 1-8 byte token (``-T``): piggy-backed 2.05 echoing the token."""
    async with plugtest_server() as server:
        run = await coap_client("-m", "get", "-T", "c0ffee01", uri=server.uri("/test"))
        response = piggybacked(run, "GET", "2.05")
        assert len(run.request.token) == 8, run.transcript
        assert response.option("Content-Format") == [TEXT_PLAIN], run.transcript
        assert run.payload, run.transcript


async def test_core_11_separate_response_with_token() -> None:
    """CON GET /separate with a chosen token: empty ACK, then the CON 2.05 carrying that token."""
    async with plugtest_server() as server:
        run = await coap_client("-m", "get", "-T", "tok4", uri=server.uri("/separate"))
        token = run.request.token
        assert token.startswith(b"tok"), run.transcript  # libcoap counts up from the -T value
        separate(run, token=token)


async def test_core_12_get_with_empty_token() -> None:
    """CON GET /test with a zero-length token. coap-client-notls always sends a token (and coapio's client
    generates one), so this test sends the datagram itself; the ACK must carry 2.05, the request's MID,
    an empty token, Content-Format and a payload."""
    async with plugtest_server() as server, RawPeer(server.address) as peer:
        request = Message(Type.CON, Code.GET, mid=0x1234, token=b"")
        request.opt.uri_path = ("test",)
        with trio.fail_after(5):
            await peer.send(request)
            response, _ = await peer.receive()
        assert (response.type, response.code, response.mid, response.token) == (
            Type.ACK, Code.CONTENT, 0x1234, b"")
        assert response.opt.content_format == ContentFormat.TEXT_PLAIN
        assert response.payload


async def test_core_13_several_uri_path_options() -> None:
    """CON GET /seg1/seg2/seg3: three Uri-Path options; piggy-backed 2.05 with Content-Format."""
    async with plugtest_server() as server:
        run = await coap_client("-m", "get", uri=server.uri("/seg1/seg2/seg3"))
        response = piggybacked(run, "GET", "2.05")
        assert run.request.option("Uri-Path") == ["seg1", "seg2", "seg3"], run.transcript
        assert response.option("Content-Format") == [TEXT_PLAIN], run.transcript
        assert run.payload, run.transcript


async def test_core_14_several_uri_query_options() -> None:
    """CON GET /query?first=1&second=2&third=3: one Uri-Query option each; 2.05 (echoing them)."""
    async with plugtest_server() as server:
        run = await coap_client("-m", "get", uri=server.uri("/query?first=1&second=2&third=3"))
        response = piggybacked(run, "GET", "2.05")
        assert run.request.option("Uri-Path") == ["query"], run.transcript
        assert run.request.option("Uri-Query") == ["first=1", "second=2", "third=3"], run.transcript
        assert response.option("Content-Format") == [TEXT_PLAIN], run.transcript
        assert run.payload.decode().splitlines() == ["first=1", "second=2", "third=3"], run.transcript


# --- TD_COAP_CORE_15, 16: lossy context ----------------------------------------------------------------


def _is_request(message: Message) -> bool:
    return message.code.is_request()


def _is_response(message: Message) -> bool:
    return message.code.is_response()


def _is_empty_ack(message: Message) -> bool:
    return message.type is Type.ACK and message.code == Code.EMPTY


@pytest.mark.parametrize("lost", ["request", "response"])
async def test_core_15_piggybacked_get_in_lossy_context(lost: str) -> None:
    """CON GET /test through a gateway that drops the request or the response once: the client
    retransmits (same MID) and the server answers the retransmission with the same response, running the
    handler only once (a dropped response is re-sent from the deduplication cache)."""
    rule = (drop_first(C2S, _is_request) if lost == "request" else drop_first(S2C, _is_response))
    async with plugtest_server() as server, gateway(server.address, rule) as gw:
        run = await coap_client("-m", "get", uri=gw.uri("/test"))
        piggybacked(run, "GET", "2.05")
        context = run.transcript + "\n" + gw.transcript
        requests = gw.datagrams(C2S, _is_request)
        responses = gw.datagrams(S2C, _is_response)
        assert len(requests) == 2, context
        assert requests[0].data == requests[1].data, context  # a retransmission: same MID and token
        assert [d.dropped for d in requests] == [lost == "request", False], context
        expected = 1 if lost == "request" else 2
        assert len(responses) == expected, context
        assert [d.dropped for d in responses] == ([True, False] if lost == "response" else [False]), context
        if lost == "response":
            assert responses[0].data == responses[1].data, context
        assert server.resource("/test").requests == {"GET": 1}


@pytest.mark.parametrize("lost", ["request", "request-ack", "response"])
async def test_core_16_separate_get_in_lossy_context(lost: str) -> None:
    """CON GET /separate through a gateway dropping the request, the server's empty ACK, or the separate
    response once. The server's retransmission timeout is shortened (ack_timeout 0.5 s).

    * request lost: the client retransmits; the server acknowledges the retransmission and answers once.
    * request ACK lost: the CON response (after 1 s, before libcoap's first retransmission at >= 2 s)
      acknowledges the request implicitly: the client sends the request once, and stops.
    * response lost: the server retransmits the CON response with the same MID until the client ACKs it.

    The fourth case, a lost response ACK, needs a client still listening after its response:
    :func:`test_core_16_lost_response_ack_is_answered_by_retransmission` uses coapio's client for it.
    """
    rules = {
        "request": drop_first(C2S, _is_request),
        "request-ack": drop_first(S2C, _is_empty_ack),
        "response": drop_first(S2C, _is_response),
    }
    async with plugtest_server(tuning=LOSSY_SERVER_TUNING) as server, \
            gateway(server.address, rules[lost]) as gw:
        run = await coap_client("-m", "get", uri=gw.uri("/separate"))
        context = run.transcript + "\n" + gw.transcript
        requests = gw.datagrams(C2S, _is_request)
        acks = gw.datagrams(S2C, _is_empty_ack)
        responses = gw.datagrams(S2C, _is_response)
        assert all(d.message is not None and d.message.type is Type.CON for d in responses), context
        assert run.response.code == "2.05" and run.payload.startswith(b"separate"), context
        assert server.resource("/separate").requests == {"GET": 1}, context
        if lost == "request":
            assert [d.dropped for d in requests] == [True, False], context
            assert requests[0].data == requests[1].data, context
            assert len(acks) == 1 and len(responses) == 1, context
            assert [p.type for p in run.received] == ["ACK", "CON"], context
        elif lost == "request-ack":
            assert len(requests) == 1, context
            assert [d.dropped for d in acks] == [True], context
            assert len(responses) == 1, context
            # The client saw no ACK, only the CON response, which it acknowledged: no retransmission.
            assert [p.type for p in run.received] == ["CON"], context
            assert [p.type for p in run.sent] == ["CON", "ACK"], context
        else:
            assert len(requests) == 1 and len(acks) == 1, context
            assert [d.dropped for d in responses] == [True, False], context
            assert responses[0].data == responses[1].data, context  # same SMID: a retransmission
            assert [p.type for p in run.received] == ["ACK", "CON"], context


async def test_core_16_lost_response_ack_is_answered_by_retransmission() -> None:
    """TD_COAP_CORE_16, dropped response ACK: the server retransmits the CON response (same MID), the
    client acknowledges it again, and the server then stops. coap-client-notls exits as soon as it has its
    response, so coapio's client plays the client (its context stays open for the retransmission)."""
    rule = drop_first(C2S, lambda m: m.type is Type.ACK)
    async with plugtest_server(tuning=LOSSY_SERVER_TUNING) as server, \
            gateway(server.address, rule) as gw, Context(bind=[("127.0.0.1", 0)]) as client:
        def client_acks() -> list[Datagram]:
            return gw.datagrams(C2S, lambda m: m.type is Type.ACK)

        with trio.fail_after(10):
            response = await client.get(gw.uri("/separate"))
            assert response.code == Code.CONTENT and response.type is Type.CON, gw.transcript
            await gw.wait_until(lambda: len(client_acks()) >= 2)
            await trio.testing.wait_all_tasks_blocked()
        responses = gw.datagrams(S2C, _is_response)
        assert [d.dropped for d in client_acks()] == [True, False], gw.transcript
        assert len(responses) == 2 and responses[0].data == responses[1].data, gw.transcript
        server_mid = responses[0].message.mid if responses[0].message else None
        assert {d.message.mid for d in client_acks() if d.message} == {server_mid}, gw.transcript
        assert server.ctx.counters.open_exchanges == 0
        assert server.resource("/separate").requests == {"GET": 1}


async def test_core_16_lost_request_ack_is_resent_for_retransmitted_request() -> None:
    """TD_COAP_CORE_16, dropped request ACK with a client that retransmits before the response is ready
    (coapio's client with ACK_TIMEOUT 0.3 s; libcoap waits >= 2 s): the server answers the retransmitted
    request with the empty ACK again, does not run the handler twice, and sends the response once."""
    async with plugtest_server(tuning=LOSSY_SERVER_TUNING) as server, \
            gateway(server.address, drop_first(S2C, _is_empty_ack)) as gw, \
            Context(bind=[("127.0.0.1", 0)], tuning=TransportTuning(ack_timeout=0.3)) as client:
        with trio.fail_after(10):
            response = await client.get(gw.uri("/separate"))
        assert response.code == Code.CONTENT, gw.transcript
        requests = gw.datagrams(C2S, _is_request)
        acks = gw.datagrams(S2C, _is_empty_ack)
        assert len(requests) >= 2 and len({d.data for d in requests}) == 1, gw.transcript
        assert [d.dropped for d in acks][:2] == [True, False], gw.transcript
        assert len(gw.datagrams(S2C, _is_response)) == 1, gw.transcript
        assert server.resource("/separate").requests == {"GET": 1}


async def test_core_17_separate_response_non() -> None:
    """NON GET /separate: no ACK at all, then a NON 2.05 with the request's token, Content-Format and
    payload."""
    async with plugtest_server() as server:
        run = await coap_client("-m", "get", "-N", uri=server.uri("/separate"))
        response = non_response(run, "GET", "2.05")
        assert run.request.option("Uri-Path") == ["separate"], run.transcript
        assert response.option("Content-Format") == [TEXT_PLAIN], run.transcript
        assert run.payload.startswith(b"separate response"), run.transcript
        assert [p.type for p in run.received] == ["NON"], run.transcript


# --- TD_COAP_CORE_18-20: locations and Accept ------------------------------------------------------


async def test_core_18_post_with_location_path() -> None:
    """CON POST /test: 2.01 with Location-Path location1, location2, location3 (no "/" in any); the new
    resource then serves the posted payload."""
    async with plugtest_server() as server:
        run = await coap_client("-m", "post", "-t", "0", "-e", "created by TD 18", uri=server.uri("/test"))
        response = piggybacked(run, "POST", "2.01")
        assert run.request.option("Content-Format") == [TEXT_PLAIN], run.transcript
        assert response.option("Location-Path") == ["location1", "location2", "location3"], run.transcript
        get = await coap_client("-m", "get", uri=server.uri("/location1/location2/location3"))
        piggybacked(get, "GET", "2.05")
        assert get.payload == b"created by TD 18", get.transcript


async def test_core_19_post_with_location_query() -> None:
    """CON POST /location-query: 2.01 with Location-Query first=1 and second=2 (no "?" or "&")."""
    async with plugtest_server() as server:
        run = await coap_client("-m", "post", "-t", "0", "-e", "x", uri=server.uri("/location-query"))
        response = piggybacked(run, "POST", "2.01")
        assert run.request.option("Uri-Path") == ["location-query"], run.transcript
        assert response.option("Location-Query") == ["first=1", "second=2"], run.transcript


async def test_core_20_accept_option() -> None:
    """CON GET /multi-format with Accept 0, then Accept 41: 2.05 with the matching Content-Format and the
    representation in that format (and, beyond the TD, 4.06 for a format the resource lacks)."""
    async with plugtest_server() as server:
        uri = server.uri("/multi-format")
        text = await coap_client("-m", "get", "-A", "0", uri=uri)
        response = piggybacked(text, "GET", "2.05")
        assert text.request.option("Accept") == [TEXT_PLAIN], text.transcript
        assert response.option("Content-Format") == [TEXT_PLAIN], text.transcript
        assert text.payload == plugtest.MultiFormatResource.TEXT.encode(), text.transcript

        xml = await coap_client("-m", "get", "-A", "41", uri=uri)
        response = piggybacked(xml, "GET", "2.05")
        assert xml.request.option("Accept") == [XML], xml.transcript
        assert xml.request.mid != text.request.mid, xml.transcript
        assert response.option("Content-Format") == [XML], xml.transcript
        assert xml.payload.startswith(b"<?xml"), xml.transcript

        json = await coap_client("-m", "get", "-A", "50", uri=uri)
        piggybacked(json, "GET", "4.06")


# --- TD_COAP_CORE_21-23: ETag, If-Match, If-None-Match --------------------------------------------


def etag_of(run: ClientRun) -> str:
    """The response's ETag as libcoap prints it (``0x0102...``)."""
    values = run.response.option("ETag")
    assert len(values) == 1, run.transcript
    assert values[0].startswith("0x") and 3 <= len(values[0]) <= 18, run.transcript
    return values[0]


async def test_core_21_get_with_etag() -> None:
    """GET /validate: 2.05 with ETAG1; GET with ETag ETAG1: 2.03 Valid with ETAG1 and no payload; after
    another client's PUT, GET with ETAG1: 2.05 with a new ETag and the new payload."""
    async with plugtest_server() as server:
        uri = server.uri("/validate")
        first = await coap_client("-m", "get", uri=uri)
        piggybacked(first, "GET", "2.05")
        assert first.request.option("ETag") == [], first.transcript
        etag1 = etag_of(first)
        assert first.payload, first.transcript

        check = await coap_client("-m", "get", "-O", f"4,{etag1}", uri=uri)
        response = piggybacked(check, "GET", "2.03")
        assert check.request.option("ETag") == [etag1], check.transcript
        assert response.option("ETag") == [etag1], check.transcript
        assert response.payload_text is None and check.payload == b"", check.transcript

        update = await coap_client("-m", "put", "-t", "0", "-e", "updated by TD 21", uri=uri)
        piggybacked(update, "PUT", "2.04")

        again = await coap_client("-m", "get", "-O", f"4,{etag1}", uri=uri)
        piggybacked(again, "GET", "2.05")
        assert etag_of(again) != etag1, again.transcript
        assert again.payload == b"updated by TD 21" != first.payload, again.transcript


async def test_core_22_put_with_if_match() -> None:
    """GET /validate (ETAG1); PUT If-Match ETAG1: 2.04; GET: 2.05 with ETAG2 and the new payload; PUT (no
    If-Match): 2.04; PUT If-Match ETAG2: 4.12, and the resource keeps the previous PUT's content."""
    async with plugtest_server() as server:
        uri = server.uri("/validate")
        first = await coap_client("-m", "get", uri=uri)
        piggybacked(first, "GET", "2.05")
        etag1 = etag_of(first)

        atomic = await coap_client("-m", "put", "-t", "0", "-e", "step 5", "-O", f"1,{etag1}", uri=uri)
        piggybacked(atomic, "PUT", "2.04")
        assert atomic.request.option("If-Match") == [etag1], atomic.transcript

        second = await coap_client("-m", "get", uri=uri)
        piggybacked(second, "GET", "2.05")
        etag2 = etag_of(second)
        assert etag2 != etag1 and second.payload == b"step 5", second.transcript

        other = await coap_client("-m", "put", "-t", "0", "-e", "step 11", uri=uri)
        piggybacked(other, "PUT", "2.04")

        stale = await coap_client("-m", "put", "-t", "0", "-e", "step 13", "-O", f"1,{etag2}", uri=uri)
        piggybacked(stale, "PUT", "4.12")
        assert server.resource("/validate").content == b"step 11"


async def test_core_23_put_with_if_none_match() -> None:
    """PUT /create1 with If-None-Match: 2.01 Created while it does not exist; the same PUT again: 4.12."""
    async with plugtest_server() as server:
        uri = server.uri("/create1")
        create = await coap_client("-m", "put", "-t", "0", "-e", "first", "-O", "5", uri=uri)
        piggybacked(create, "PUT", "2.01")
        assert create.request.option("If-None-Match") == [""], create.transcript
        assert create.request.option("Uri-Path") == ["create1"], create.transcript

        again = await coap_client("-m", "put", "-t", "0", "-e", "second", "-O", "5", uri=uri)
        piggybacked(again, "PUT", "4.12")
        assert server.resource("/create1").content == b"first"


async def test_core_31_ping() -> None:
    """CoAP ping: a 4-byte Empty CON gets a 4-byte RST with the same MID. coap-client-notls 4.3 has no
    one-shot ping, so the test sends the datagram itself."""
    async with plugtest_server() as server, RawPeer(server.address) as peer:
        ping = bytes([0x40, 0x00, 0xBE, 0xEF])
        with trio.fail_after(5):
            await peer.send(ping)
            reply, data = await peer.receive()
        assert data == bytes([0x70, 0x00, 0xBE, 0xEF])
        assert (reply.type, reply.code, reply.mid, reply.token) == (Type.RST, Code.EMPTY, 0xBEEF, b"")


# --- TD_COAP_LINK_01-09 --------------------------------------------------------------------------


async def test_link_01_well_known_core() -> None:
    """GET /.well-known/core: 2.05, Content-Format 40, every link the server offers."""
    async with plugtest_server() as server:
        run, links = await well_known_core(server)
        assert links == server.site.links(), run.transcript
        assert {"/test", "/link1", "/link2", "/link3", "/path", "/path/sub1"} <= hrefs(links)


LINK_FILTERS = [
    ("TD_COAP_LINK_02", "rt=Type1", {"/link1", "/link3"}),
    ("TD_COAP_LINK_03", "rt=*", {"/link1", "/link2", "/link3", "/empty-type"}),
    ("TD_COAP_LINK_04", "rt=Type2", {"/link1", "/link2"}),
    ("TD_COAP_LINK_05", "if=If*", {"/link1", "/link2"}),
    ("TD_COAP_LINK_06", "sz=*", {"/large"}),
    ("TD_COAP_LINK_07", "href=/link1", {"/link1"}),
    ("TD_COAP_LINK_08", "href=/link*", {"/link1", "/link2", "/link3"}),
]


@pytest.mark.parametrize(("td", "query", "expected"), LINK_FILTERS, ids=[f[0] for f in LINK_FILTERS])
async def test_link_02_to_08_filtered_discovery(td: str, query: str, expected: set[str]) -> None:
    """GET /.well-known/core?QUERY: Content-Format 40 and exactly the matching links.

    LINK_03: rt=* lists the links with an rt attribute (the empty one of /empty-type included), not those
    without. LINK_04: the groups rt="Type1 Type2" and "Type2 Type3" match rt=Type2, "Type1 Type3" and ""
    do not. LINK_05: if=If* selects If1 and If2, not foo or none.
    """
    async with plugtest_server() as server:
        run, links = await well_known_core(server, query)
        assert run.request.option("Uri-Query") == [query], run.transcript
        assert hrefs(links) == expected, run.transcript
        # The preconditions: the server also offers what the filter must leave out.
        all_links = server.site.links()
        assert hrefs(all_links) - expected, run.transcript
        if td == "TD_COAP_LINK_03":
            assert any(link.get("rt") is None for link in all_links)
        if td == "TD_COAP_LINK_04":
            types = sorted(str(link.get("rt")) for link in all_links if link.get("rt") is not None)
            assert types == ["", "Type1 Type2", "Type1 Type3", "Type2 Type3"]


async def test_link_09_hierarchical_link_descriptions() -> None:
    """/.well-known/core lists /path with ct=40; GET /path gives the link descriptions of /path/sub1..3
    (Content-Format 40); GET /path/sub1 gives 2.05 with a payload containing /path/sub1."""
    async with plugtest_server() as server:
        run, links = await well_known_core(server)
        (path,) = [link for link in links if link.href == "/path"]
        assert path.get("ct") == "40", run.transcript

        listing = await coap_client("-m", "get", uri=server.uri("/path"))
        response = piggybacked(listing, "GET", "2.05")
        assert response.option("Content-Format") == [LINK_FORMAT], listing.transcript
        subs = parse_links(listing.payload)
        assert hrefs(subs) == {"/path/sub1", "/path/sub2", "/path/sub3"}, listing.transcript

        sub = await coap_client("-m", "get", uri=server.uri(sorted(hrefs(subs))[0]))
        piggybacked(sub, "GET", "2.05")
        assert b"/path/sub1" in sub.payload, sub.transcript


# --- message-layer behaviour a server must show (beyond the TDs) ----------------------------------------


async def test_unrecognized_critical_option_gets_4_02() -> None:
    """RFC 7252 §5.4.1: a CON request with an unknown critical option (65001) is answered 4.02."""
    async with plugtest_server() as server:
        run = await coap_client("-m", "get", "-O", "65001,x", uri=server.uri("/test"))
        piggybacked(run, "GET", "4.02")
        assert server.resource("/test").requests == {}


async def test_non_request_with_unrecognized_critical_option_is_rejected() -> None:
    """The bad NON request is followed by a good one: the first datagram back must be a RST for the bad
    one, or the good one's response (the bad one silently ignored) — never a 4.02. No waiting for silence:
    the server handles datagrams in order."""
    async with plugtest_server() as server, RawPeer(server.address) as peer:
        bad = Message(Type.NON, Code.GET, mid=1, token=b"bad")
        bad.opt.uri_path = ("test",)
        bad.opt.add(65001, b"x")
        good = Message(Type.NON, Code.GET, mid=2, token=b"good")
        good.opt.uri_path = ("test",)
        with trio.fail_after(5):
            await peer.send(bad)
            await peer.send(good)
            first, _ = await peer.receive()
        assert (first.type, first.mid) == (Type.RST, 1) or first.token == b"good", first


async def test_well_known_core_with_unavailable_accept_gets_4_06() -> None:
    async with plugtest_server() as server:
        run = await coap_client("-m", "get", "-A", "50", uri=server.uri("/.well-known/core"))
        piggybacked(run, "GET", "4.06")


async def test_unknown_path_and_method_get_4_04_and_4_05() -> None:
    async with plugtest_server() as server:
        missing = await coap_client("-m", "get", uri=server.uri("/no/such/thing"))
        piggybacked(missing, "GET", "4.04")
        wrong = await coap_client("-m", "post", "-e", "x", uri=server.uri("/seg1/seg2/seg3"))
        piggybacked(wrong, "POST", "4.05")
        non = await coap_client("-m", "get", "-N", uri=server.uri("/no/such/thing"))
        non_response(non, "GET", "4.04")


async def test_duplicate_con_gets_the_cached_response_and_runs_once() -> None:
    """A CON received twice (same MID) is answered twice with identical bytes; the handler runs once."""
    async with plugtest_server() as server, RawPeer(server.address) as peer:
        request = Message(Type.CON, Code.POST, mid=7, token=b"dup", payload=b"once")
        request.opt.uri_path = ("test",)
        with trio.fail_after(5):
            await peer.send(request)
            _, first = await peer.receive()
            await peer.send(request)
            _, second = await peer.receive()
        assert first == second
        assert server.resource("/test").requests == {"POST": 1}


async def test_reset_to_separate_response_stops_its_retransmission() -> None:
    """A client may reject a separate CON response with a RST (RFC 7252 §4.2): the server then stops
    retransmitting it."""
    async with plugtest_server(tuning=LOSSY_SERVER_TUNING) as server, RawPeer(server.address) as peer:
        request = Message(Type.CON, Code.GET, mid=99, token=b"rst")
        request.opt.uri_path = ("separate",)
        with trio.fail_after(5):
            await peer.send(request)
            ack, _ = await peer.receive()
            response, _ = await peer.receive()
        assert (ack.type, ack.code, ack.mid) == (Type.ACK, Code.EMPTY, 99)
        assert (response.type, response.code, response.token) == (Type.CON, Code.CONTENT, b"rst")
        assert server.ctx.counters.open_exchanges == 1
        await peer.send(Message(Type.RST, Code.EMPTY, mid=response.mid))
        await trio.testing.wait_all_tasks_blocked()
        assert server.ctx.counters.open_exchanges == 0


async def test_unexpected_con_response_is_reset() -> None:
    """A CON response for a token the server never used is answered with a RST (RFC 7252 §4.2)."""
    async with plugtest_server() as server, RawPeer(server.address) as peer:
        with trio.fail_after(5):
            await peer.send(Message(Type.CON, Code.CONTENT, mid=4242, token=b"stray", payload=b"?"))
            reply, data = await peer.receive()
        assert (reply.type, reply.code, reply.mid) == (Type.RST, Code.EMPTY, 4242) and len(data) == 4


async def test_block2_transfer_of_large_with_small_blocks() -> None:
    """libcoap fetches /large (the sz resource of TD_COAP_LINK_06) in 64-byte blocks (RFC 7959 §2.4, early
    negotiation): every block is a 2.05 with Block2, and the reassembled body is the resource's; without
    a block size it arrives in 1024-byte blocks or whole."""
    async with plugtest_server() as server:
        blocks = await coap_client("-m", "get", "-b", "64", uri=server.uri("/large"))
        assert blocks.payload == plugtest.LargeResource.BODY, blocks.transcript
        assert "Block2:" in blocks.transcript and "/64" in blocks.transcript
        whole = await coap_client("-m", "get", uri=server.uri("/large"))
        assert whole.payload == plugtest.LargeResource.BODY, whole.transcript


# --- the example as a program -------------------------------------------------------------------------


async def test_plugtest_server_runs_as_a_program_and_stops_on_sigint() -> None:
    """``python examples/plugtest_server.py --bind 127.0.0.1:PORT -v`` answers GET /test and logs it, and
    SIGINT ends it promptly with status 0 and no traceback."""
    port = free_udp_port()
    proc = await trio.lowlevel.open_process(
        [sys.executable, str(PLUGTEST_PATH), "--bind", f"127.0.0.1:{port}", "-v"],
        stderr=subprocess.PIPE,
    )
    stderr = b""
    try:
        assert proc.stderr is not None
        with trio.fail_after(15):
            while b"listening on" not in stderr:
                chunk = await proc.stderr.receive_some()
                assert chunk, f"the server exited before listening: {stderr!r}"
                stderr += chunk
        run = await coap_client("-m", "get", uri=f"coap://127.0.0.1:{port}/test")
        piggybacked(run, "GET", "2.05")
        assert run.payload == plugtest.TestResource.INITIAL, run.transcript
        proc.send_signal(signal.SIGINT)
        with trio.fail_after(5):
            while chunk := await proc.stderr.receive_some():
                stderr += chunk
            status = await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert status == 0, stderr.decode()
    assert b"Traceback" not in stderr, stderr.decode()
    assert b"GET /test from coap://127.0.0.1:" in stderr, stderr.decode()
    assert b"SIGINT received: stopping" in stderr, stderr.decode()
