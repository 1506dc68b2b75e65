"""One side of the lossy-link scenarios of tests/test_netns_lossy.py, run inside a network namespace.

``python netns_scenario.py ROLE CONFIG_JSON`` where ROLE is

* ``server``: serves ``/count`` (POST: counts how often each request body was handled), ``/echo`` (POST:
  answers the whole body, so a Block1 upload comes back Block2) and ``/blob`` (GET: a seeded random body).
  Prints ``ready`` once bound, then one JSON line of figures when its stdin reaches end of file.
* ``requests``: ``clients`` contexts, each sending its share of ``count`` CON POSTs one after another;
  prints one JSON line with each request's outcome and duration, and the message layers' counters.
* ``blockwise``: uploads a seeded body to ``/echo`` and downloads ``/blob`` at the same time; prints the
  sha256 of what went out and what came back.

It is a separate program because each side must run in its own namespace (``ip netns exec``).
"""

from __future__ import annotations

import collections
import hashlib
import json
import random
import sys
from contextlib import AsyncExitStack
from typing import Any

import attrs
import trio

from coapio import Code, Context, Message, Resource, Site, TransportTuning
from coapio.error import CoapError, RequestTimedOut


def seeded_body(seed: int, size: int) -> bytes:
    """The body both sides (and the test) derive from one seed, so only digests need to travel."""
    return random.Random(seed).randbytes(size)


def tuning_from(config: dict[str, Any]) -> TransportTuning:
    return TransportTuning(
        ack_timeout=config["ack_timeout"],
        max_retransmit=config.get("max_retransmit", 4),
        probing_rate=config.get("probing_rate", 1.0),
    )


def stats_of(contexts: list[Context]) -> dict[str, int]:
    """The message layers' counters (retransmissions, duplicates, ...) summed over every endpoint."""
    total: collections.Counter[str] = collections.Counter()
    for context in contexts:
        for endpoint in context.transports:
            total.update(attrs.asdict(endpoint.layer.stats))
    return dict(total)


class Count(Resource):
    def __init__(self) -> None:
        super().__init__()
        self.runs: collections.Counter[str] = collections.Counter()

    def render_post(self, request: Message) -> Message:
        self.runs[request.payload.decode()] += 1
        return Message(payload=request.payload)


class Echo(Resource):
    def __init__(self) -> None:
        super().__init__()
        self.digests: list[str] = []

    def render_post(self, request: Message) -> Message:
        self.digests.append(hashlib.sha256(request.payload).hexdigest())
        return Message(payload=request.payload)


class Blob(Resource):
    def __init__(self, body: bytes) -> None:
        super().__init__()
        self.body = body

    def render_get(self, request: Message) -> Message:
        return Message(payload=self.body)


async def server(config: dict[str, Any]) -> None:
    count, echo = Count(), Echo()
    site = Site()
    site.add("count", count)
    site.add("echo", echo)
    site.add("blob", Blob(seeded_body(config.get("blob_seed", 0), config.get("blob_size", 0))))
    bind = (config["host"], config["port"])
    async with Context(bind=[bind], site=site, tuning=tuning_from(config)) as context:
        print("ready", flush=True)
        await trio.to_thread.run_sync(sys.stdin.read)  # the test closes our stdin to stop us
        stats = stats_of([context])
    print(json.dumps({"runs": count.runs, "echo_digests": echo.digests, "stats": stats}), flush=True)


async def requests(config: dict[str, Any]) -> None:
    tuning = tuning_from(config)
    uri = f"coap://{config['host']}:{config['port']}/count"
    clients, total = config["clients"], config["count"]
    outcomes: list[tuple[str, str, float]] = []

    async def one_client(context: Context, first: int) -> None:
        for number in range(first, total, clients):
            body = str(number).encode()
            start = trio.current_time()
            try:
                # A bound well past MAX_TRANSMIT_WAIT plus a PROBING_RATE hold: the library must have
                # given up by then.
                with trio.fail_after(tuning.max_transmit_wait + 100 / tuning.probing_rate + 10):
                    response = await context.post(uri, body)
                if response.code == Code.CHANGED and response.payload == body:
                    outcome = "completed"
                else:
                    outcome = f"wrong response {response.code.dotted} {response.payload!r}"
            except RequestTimedOut:
                outcome = "gave up"
            except (CoapError, trio.TooSlowError) as e:
                outcome = f"{type(e).__name__}: {e}"
            outcomes.append((body.decode(), outcome, trio.current_time() - start))

    start = trio.current_time()
    async with AsyncExitStack() as stack:
        contexts = [
            await stack.enter_async_context(Context(bind=[(config["bind"], 0)], tuning=tuning))
            for _ in range(clients)
        ]
        async with trio.open_nursery() as nursery:
            for first, context in enumerate(contexts):
                nursery.start_soon(one_client, context, first)
        stats = stats_of(contexts)
    print(json.dumps({"outcomes": outcomes, "stats": stats, "wall": trio.current_time() - start}))


async def blockwise(config: dict[str, Any]) -> None:
    tuning = tuning_from(config)
    base = f"coap://{config['host']}:{config['port']}"
    upload = seeded_body(config["upload_seed"], config["size"])
    result: dict[str, Any] = {"sent": hashlib.sha256(upload).hexdigest()}

    async def echo(context: Context) -> None:
        response = await context.post(base + "/echo", upload)
        result["echo"] = [response.code.dotted, hashlib.sha256(response.payload).hexdigest()]

    async def blob(context: Context) -> None:
        response = await context.get(base + "/blob")
        result["blob"] = [response.code.dotted, hashlib.sha256(response.payload).hexdigest()]

    start = trio.current_time()
    async with Context(bind=[(config["bind"], 0)], tuning=tuning) as one:
        async with Context(bind=[(config["bind"], 0)], tuning=tuning) as other:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(echo, one)
                nursery.start_soon(blob, other)
            result["stats"] = stats_of([one, other])
    result["wall"] = trio.current_time() - start
    print(json.dumps(result))


if __name__ == "__main__":
    role, config = sys.argv[1], json.loads(sys.argv[2])
    trio.run({"server": server, "requests": requests, "blockwise": blockwise}[role], config)
