"""The amplification mitigation (RFC 9175 §2.4, ``echo_amplification_check``) with the clients people use.

With the check on, a response more than three times its request's size goes only to an address that has
returned an Echo value; the first answer is 4.01 with one. libcoap's ``coap-client`` repeats the request
with it and gets the response byte for byte. aiocoap 0.4 answers Echo challenges only under OSCORE: its
plain requests get the 4.01, which is why the check is off by default (see docs/reliability.md).
"""

from __future__ import annotations

import hashlib

import anyio
import pytest
import trio
from conftest import require_binary, require_interop

from coapio import Context, Message, Resource, Site, TransportTuning

pytestmark = pytest.mark.interop

BODY = bytes(range(256)) * 12  # 3 KiB: block-wise with every client's default block size
GUARDED = TransportTuning(echo_amplification_check=True)


class Large(Resource):
    def render_get(self, request: Message) -> Message:
        return Message(payload=BODY)


def make_site() -> Site:
    site = Site()
    site.add("large", Large())
    return site


async def test_libcoap_client_gets_a_large_response_through_the_echo_challenge() -> None:
    client = require_binary("coap-client-notls")
    async with Context(bind=[("127.0.0.1", 0)], site=make_site(), tuning=GUARDED) as server:
        port = server.transports[0].local[1]
        with trio.fail_after(20):
            result = await trio.run_process(
                [client, "-m", "get", "-B", "10", f"coap://127.0.0.1:{port}/large"],
                capture_stdout=True, capture_stderr=True, check=False,
            )
        assert result.returncode == 0, result.stderr
        assert hashlib.sha256(result.stdout.rstrip(b"\n")).digest() == hashlib.sha256(BODY).digest()
        assert len(server._server.echo._verified) == 1  # verified by the Echo value it returned


@pytest.mark.parametrize("guarded", [False, True], ids=["default", "check-on"])
def test_aiocoap_client_gets_a_large_response_unless_the_check_is_on(guarded: bool) -> None:
    aiocoap = require_interop("aiocoap")

    async def main() -> None:
        tuning = GUARDED if guarded else None
        async with Context(bind=[("127.0.0.1", 0)], site=make_site(), tuning=tuning) as server:
            port = server.transports[0].local[1]
            client = await aiocoap.Context.create_client_context()
            try:
                with anyio.fail_after(10):
                    request = aiocoap.Message(code=aiocoap.GET, uri=f"coap://127.0.0.1:{port}/large")
                    response = await client.request(request).response
            finally:
                await client.shutdown()
        if guarded:  # aiocoap 0.4 does not repeat a plain request with the Echo value
            assert str(response.code) == "4.01 Unauthorized"
        else:
            assert str(response.code) == "2.05 Content" and response.payload == BODY

    anyio.run(main, backend="asyncio")
