"""The amplification mitigation (RFC 9175 §2.4, on by default) with the clients people actually use.

A response more than three times its request's size waits until the client has shown that it receives at
its address: by resetting a CoAP ping, or by returning the Echo value of a 4.01 challenge sent when the
ping goes unanswered for ``reachability_wait``. aiocoap resets pings at once and does not answer Echo
challenges outside OSCORE; libcoap's ``coap-client`` answers Echo challenges and resets only a ping's
retransmission. Both must get large responses, byte for byte, from a server with the default settings.
"""

from __future__ import annotations

import hashlib

import anyio
import pytest
import trio
from conftest import require_binary, require_interop

from coapio import Context, Message, Resource, Site

pytestmark = pytest.mark.interop

BODY = bytes(range(256)) * 12  # 3 KiB: block-wise with every client's default block size


class Large(Resource):
    def render_get(self, request: Message) -> Message:
        return Message(payload=BODY)


def make_site() -> Site:
    site = Site()
    site.add("large", Large())
    return site


async def test_libcoap_client_gets_a_large_response_through_the_echo_challenge() -> None:
    client = require_binary("coap-client-notls")
    async with Context(bind=[("127.0.0.1", 0)], site=make_site()) as server:
        assert server.server.tuning.echo_amplification_check  # the default
        port = server.endpoints[0].local[1]
        with trio.fail_after(20):
            result = await trio.run_process(
                [client, "-m", "get", "-B", "10", f"coap://127.0.0.1:{port}/large"],
                capture_stdout=True, capture_stderr=True, check=False,
            )
        assert result.returncode == 0, result.stderr
        assert hashlib.sha256(result.stdout.rstrip(b"\n")).digest() == hashlib.sha256(BODY).digest()


def test_aiocoap_client_gets_a_large_response_through_the_ping() -> None:
    aiocoap = require_interop("aiocoap")

    async def main() -> None:
        async with Context(bind=[("127.0.0.1", 0)], site=make_site()) as server:
            port = server.endpoints[0].local[1]
            client = await aiocoap.Context.create_client_context()
            try:
                with anyio.fail_after(10):
                    request = aiocoap.Message(code=aiocoap.GET, uri=f"coap://127.0.0.1:{port}/large")
                    response = await client.request(request).response
            finally:
                await client.shutdown()
            assert str(response.code) == "2.05 Content" and response.payload == BODY
            assert len(server.server.echo._verified) == 1  # verified by its Reset to the ping

    anyio.run(main, backend="asyncio")

