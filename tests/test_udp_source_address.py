"""A server bound to a wildcard address answers from the address each request was sent to.

Binding a wildcard address is only safe where nothing but loopback exists, so the scenario runs in a
private network namespace (``unshare --net``) whose only interface is ``lo``; the test is skipped with
the reason where namespaces cannot be created (not root, no unshare).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

import pytest

SCENARIO = textwrap.dedent(
    """
    import sys, trio
    from coapio import Context, Message, Resource, Site

    class Where(Resource):
        def render_get(self, request):
            return Message(payload=request.uri.encode())

    async def main(bind, client_bind, target):
        site = Site()
        site.add("where", Where())
        async with Context(bind=[bind], site=site) as server:
            port = server.transports[0].local[1]
            assert server.transports[0].pktinfo
            async with Context(bind=[client_bind]) as client:
                with trio.fail_after(5):
                    host = f"[{target}]" if ":" in target else target
                    response = await client.get(f"coap://{host}:{port}/where")
            # the response was matched, so it came from the address the request went to; and the
            # server composed the request's URI with the address it was sent to (RFC 7252 §6.5)
            assert response.payload.decode() == f"coap://{host}:{port}/where", response.payload
            print("ok", response.remote)

    bind_host, client_host, target = sys.argv[1:4]
    trio.run(main, (bind_host, 0), (client_host, 0), target)
    """
)


def run_in_namespace(*args: str) -> subprocess.CompletedProcess[str]:
    setup = "ip link set lo up && ip -6 addr add fd00::2/128 dev lo nodad 2>/dev/null; exec \"$@\""
    command = ["unshare", "--net", "sh", "-c", setup, "sh", sys.executable, "-c", SCENARIO, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=30)


@pytest.fixture(scope="module")
def namespaces() -> None:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("unshare or ip (util-linux, iproute2) not installed")
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot create a network namespace here: {probe.stderr.strip()}")


@pytest.mark.parametrize(
    ("bind", "client", "target"),
    [
        ("0.0.0.0", "127.0.0.1", "127.0.0.2"),  # the kernel alone would answer from 127.0.0.1
        ("::", "127.0.0.1", "127.0.0.3"),  # dual-stack: an IPv4 peer seen as ::ffff:127.0.0.3
        ("::", "::1", "fd00::2"),  # a second IPv6 address on lo
    ],
)
def test_wildcard_bound_server_answers_from_the_request_destination(
    namespaces: None, bind: str, client: str, target: str
) -> None:
    result = run_in_namespace(bind, client, target)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok"), result.stdout + result.stderr
