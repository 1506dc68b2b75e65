"""libcoap's ``coap-client-notls`` observing a coapio ``render_to_pipe`` resource (issue 10): it sees the
notifications the producer sends, and when it leaves — deregistering, or its closed port drawing ICMP port
unreachable — the producer's scope is cancelled and its ``finally`` runs."""

from __future__ import annotations

import re

import pytest
import trio
import trio.testing
from conftest import require_binary

from coapio import Context, Message, Resource, ServerPipe, Site

pytestmark = pytest.mark.interop

LOCAL = ("127.0.0.1", 0)
INTERVAL = 0.2  # seconds between notifications
OBSERVE_FOR = 3  # coap-client-notls -s


class Stream(Resource):
    """Answers a registration with ``n=0``, then notifies ``n=1``, ``n=2``, ... every INTERVAL seconds;
    any other request (a deregistration) gets one plain response. Records the requests."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Message] = []
        self.cancelled = False
        self.ended = trio.Event()

    async def render_to_pipe(self, request: Message, pipe: ServerPipe) -> None:
        self.requests.append(request)
        if request.opt.observe != 0:
            pipe.add_response(Message(payload=b"not observing"))
            return
        sent = 0
        try:
            while True:
                pipe.add_response(Message(payload=b"n=%d" % sent), is_last=False)
                sent += 1
                await trio.sleep(INTERVAL)
        except trio.Cancelled:
            self.cancelled = True
            raise
        finally:
            self.ended.set()


async def test_libcoap_observes_a_render_to_pipe_resource_and_leaving_cancels_the_producer() -> None:
    client = require_binary("coap-client-notls")
    stream = Stream()
    site = Site()
    site.add("stream", stream)
    async with Context(bind=[LOCAL], site=site) as server:
        host, port = server.local_addresses[0]
        argv = [client, "-w", "-B", str(OBSERVE_FOR + 2), "-s", str(OBSERVE_FOR), "-m", "get",
                f"coap://{host}:{port}/stream"]
        with trio.fail_after(OBSERVE_FOR + 10):
            run = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
        output = run.stdout.decode("utf-8", "replace")
        transcript = f"{argv}\nexit {run.returncode}\n{output}\n{run.stderr.decode('utf-8', 'replace')}"
        received = [int(n) for n in re.findall(r"n=(\d+)", output)]
        # The first response and several notifications, in the order sent.
        assert len(received) >= 5 and received[0] == 0, transcript
        assert received == sorted(set(received)), transcript
        with trio.fail_after(5):
            await stream.ended.wait()
        assert stream.cancelled, transcript
        # libcoap 4.3.1 deregisters when -s runs out (a GET with Observe: 1 on the token); a client that
        # does not would have drawn ICMP port unreachable with the next notification instead.
        layer = server.transports[0].layer
        deregistered = [r.opt.observe for r in stream.requests] == [0, 1]
        assert deregistered or layer.stats.received == 1, transcript
        await trio.testing.wait_all_tasks_blocked()
        counters = server.counters
        assert (counters.live_handlers, counters.observers) == (0, 0), transcript
