"""aiocoap as an OSCORE peer, for tests/test_interop_aiocoap_oscore_e2e.py: a site, and a process to run it.

Imported, it offers :func:`build_site` and :func:`start_server` (the test runs them in its own asyncio loop).
Run as a program, it is one aiocoap process::

    python3 aiocoap_oscore_peer.py server CREDENTIALS
        serve the site on 127.0.0.1 at a free port, wrapped in aiocoap's OscoreSiteWrapper with the
        credentials file's contexts; prints ``port N`` on stdout once ready; runs until killed.
    python3 aiocoap_oscore_peer.py client CREDENTIALS METHOD URI [PAYLOAD_HEX]
        one request with aiocoap's client (its OSCORE transport protects what the credentials map);
        prints one JSON line: ``{"code": "2.05", "payload_hex": ...}`` or ``{"error": "Type: text"}``.

Credentials files are aiocoap's JSON format, with absolute context directories (aiocoap resolves
relative ones against the working directory).
"""

from __future__ import annotations

import asyncio
import errno
import json
import socket
import sys
from typing import Any

import aiocoap
import aiocoap.resource as aresource
from aiocoap.credentials import CredentialsMap
from aiocoap.oscore_sitewrapper import OscoreSiteWrapper

#: ``/large``: 8 KiB that are not a repeated text, so a misplaced block shows.
LARGE = bytes((i * 7 + i // 256) % 256 for i in range(8192))


class Hello(aresource.Resource):
    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        return aiocoap.Message(payload=b"hello from aiocoap", content_format=0)


class Echo(aresource.Resource):
    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        return aiocoap.Message(code=aiocoap.CHANGED, payload=request.payload)


class Large(aresource.Resource):
    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        return aiocoap.Message(payload=LARGE)


class WhoAmI(aresource.Resource):
    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        claims = getattr(request.remote, "authenticated_claims", [])
        return aiocoap.Message(payload=repr(list(claims)).encode())


class Counter(aresource.ObservableResource):
    """Observable: counts up every 50 ms while observed; ``observers`` is the count aiocoap reports."""

    def __init__(self) -> None:
        super().__init__()
        self.value = 0
        self.observers = 0
        self._task: asyncio.Task[None] | None = None

    def update_observation_count(self, newcount: int) -> None:
        self.observers = newcount
        if newcount and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._tick())
        elif not newcount and self._task is not None:
            self._task.cancel()
            self._task = None

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(0.05)
            self.value += 1
            self.updated_state()

    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        return aiocoap.Message(payload=b"%d" % self.value)


def build_site() -> tuple[aresource.Site, Counter]:
    site = aresource.Site()
    counter = Counter()
    site.add_resource(["hello"], Hello())
    site.add_resource(["echo"], Echo())
    site.add_resource(["large"], Large())
    site.add_resource(["whoami"], WhoAmI())
    site.add_resource(["counter"], counter)
    return site, counter


def load_credentials(path: str) -> CredentialsMap:
    credentials = CredentialsMap()
    with open(path, "rb") as f:
        credentials.load_from_dict(json.load(f))
    return credentials


async def start_server(credentials: CredentialsMap) -> tuple[aiocoap.Context, int, Counter]:
    """aiocoap's OSCORE server (the way ``aiocoap-server --credentials`` builds it) at a free port."""
    site, counter = build_site()
    wrapped = OscoreSiteWrapper(site, credentials)
    for _attempt in range(10):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        try:
            context = await aiocoap.Context.create_server_context(
                wrapped, bind=("127.0.0.1", port), transports=["udp6"], server_credentials=credentials)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                continue
            raise
        return context, port, counter
    raise RuntimeError("no free UDP port")


async def _serve(path: str) -> None:
    _context, port, _ = await start_server(load_credentials(path))
    print(f"port {port}", flush=True)
    await asyncio.Event().wait()


async def _client(credentials: dict[str, Any], method: str, uri: str,
                  payload_hex: str = "") -> dict[str, Any]:
    context = await aiocoap.Context.create_client_context(transports=["oscore", "udp6"])
    context.client_credentials.load_from_dict(credentials)
    try:
        request = aiocoap.Message(code=getattr(aiocoap, method), uri=uri, payload=bytes.fromhex(payload_hex))
        response = await asyncio.wait_for(context.request(request).response, 20)
        return {"code": response.code.dotted, "payload_hex": response.payload.hex()}
    except Exception as e:  # reported to the test, which decides
        return {"error": f"{type(e).__name__}: {e}"}
    finally:
        await context.shutdown()


def main(argv: list[str]) -> int:
    if argv[:1] == ["server"] and len(argv) == 2:
        asyncio.run(_serve(argv[1]))
        return 0
    if argv[:1] == ["client"] and len(argv) in (4, 5):
        with open(argv[1], "rb") as f:
            credentials = json.load(f)
        print(json.dumps(asyncio.run(_client(credentials, *argv[2:]))), flush=True)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
