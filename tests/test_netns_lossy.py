"""CoAP over a really lossy link: two network namespaces joined by a veth pair that the kernel impairs.

Each test makes two private namespaces (their names carry the pid) joined by a veth pair, 10.77.0.1/24 on
the client side and 10.77.0.2/24 on the server side, impairs the link, runs a coapio server in one and
coapio clients in the other (tests/netns_scenario.py through ``ip netns exec``) and deletes both
namespaces afterwards, also on failure. Nothing leaves the namespaces. The tests are skipped where
namespaces cannot be made (not root, no iproute2) or where the kernel offers no way to lose datagrams.

How the link is impaired (the mechanism is printed and recorded as the ``impairment`` property):

* ``netem``: ``tc qdisc ... netem loss/duplicate/delay+reorder`` on each end, where the kernel has
  sch_netem.
* ``bpf``: without netem, a classic-BPF tc filter (``ld rand``, direct action) on each end's clsact ingress
  drops the given share of UDP datagrams, and a second one mirrors a share into a spare interface's
  ingress (``action mirred``), which duplicates them. Both need only iproute2 and cls_bpf, clsact and
  act_mirred in the kernel. Drops happen on ingress: an egress drop is reported to a sender with
  IP_RECVERR as ENOBUFS, which coapio counts as a lost datagram (see the test below). Reordering needs
  a delay, which only netem gives, so the reordering case is skipped without it.

Timing: RFC 7252's clock runs 20 times faster, on both sides, through ``TransportTuning``: ACK_TIMEOUT
0.1 s instead of 2 s and PROBING_RATE 20 bytes/s instead of 1 (the first request after a give-up may wait
for it: a 1 byte/s hold of some 20 s would dwarf everything else). MAX_RETRANSMIT (4) and
ACK_RANDOM_FACTOR (1.5) keep their defaults, except that the block-wise transfer uses ACK_TIMEOUT 0.05 s
and MAX_RETRANSMIT 12: with 20 % loss each way one exchange gives up with probability 0.36**5 = 0.6 %,
and a 64 KiB round trip of 128 exchanges would fail half the time.

Sizes, for longer runs: ``COAPIO_NETNS_REQUESTS`` (default 400 CON requests from 16 clients),
``COAPIO_NETNS_BLOCK_KIB`` (default 64 KiB each way); ``COAPIO_NETNS_IMPAIR=netem|bpf`` forces a
mechanism. The figures (completed, gave up, retransmissions, drops) are printed (``pytest -rA``) and
recorded with ``record_property``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from netns_scenario import seeded_body

from coapio import Code, Message, TransportTuning, Type
from coapio.protocol.messagelayer import MessageLayer

SCENARIO = str(Path(__file__).with_name("netns_scenario.py"))
CLIENT_IP, SERVER_IP, PORT = "10.77.0.1", "10.77.0.2", 5683
MACS = {"client": "02:00:0a:4d:00:01", "server": "02:00:0a:4d:00:02"}
ACK_TIMEOUT = 0.1
PROBING_RATE = 20.0
LOSS = 0.2
REQUESTS = int(os.environ.get("COAPIO_NETNS_REQUESTS", "400"))
CLIENTS = 16
BLOCK_BYTES = int(os.environ.get("COAPIO_NETNS_BLOCK_KIB", "64")) * 1024
#: How late a process may notice a deadline on a busy 2-core machine.
SLACK = 1.0
PREFIX = "coapio-lossy-"

TC_ACT_UNSPEC, TC_ACT_SHOT = 0xFFFFFFFF, 2


class Unsupported(Exception):
    """The kernel (or the tools) cannot impair the link this way."""


def run(*argv: str) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise Unsupported(f"`{' '.join(argv)}` failed: {result.stderr.strip()}")
    return result.stdout


def udp_share_program(share: float, hit: int, miss: int) -> str:
    """Classic BPF (tc's ``bytecode`` syntax) returning ``hit`` for a random ``share`` of UDP datagrams.

    tc hands a classic program the frame from its Ethernet header on, on ingress and egress alike; IPv6
    is matched without extension headers, which coapio never sends.
    """
    threshold = min(round(share * (1 << 32)), 0xFFFFFFFF)
    insns = [
        (0x28, 0, 0, 12),  # ldh [12]: EtherType
        (0x15, 0, 2, 0x0800),  # IPv4? else to 4
        (0x30, 0, 0, 23),  # ldb [23]: IPv4 protocol
        (0x05, 0, 0, 2),  # ja 6
        (0x15, 0, 4, 0x86DD),  # IPv6? else miss
        (0x30, 0, 0, 20),  # ldb [20]: IPv6 next header
        (0x15, 0, 2, 17),  # UDP? else miss
        (0x20, 0, 0, 0xFFFFF038),  # ld rand (SKF_AD_OFF + SKF_AD_RANDOM)
        (0x35, 0, 1, threshold),  # rand >= threshold: miss, else hit
        (0x06, 0, 0, miss),
        (0x06, 0, 0, hit),
    ]
    return f"{len(insns)}," + ",".join(f"{c} {jt} {jf} {k}" for c, jt, jf, k in insns)


class Link:
    """Two namespaces joined by a veth pair, plus a spare veth pair whose ends only receive mirrored
    copies (the duplicates of the ``bpf`` mechanism)."""

    def __init__(self) -> None:
        pid = os.getpid()
        self.ns = {"client": f"{PREFIX}{pid}-c", "server": f"{PREFIX}{pid}-s"}
        self.dev = {"client": f"c{pid}", "server": f"s{pid}"}
        self.spare = {"client": f"ct{pid}", "server": f"st{pid}"}
        self.ip = {"client": CLIENT_IP, "server": SERVER_IP}
        self.mechanism = ""
        self.processes: list[subprocess.Popen[str]] = []

    def create(self) -> None:
        ns, dev, spare = self.ns, self.dev, self.spare
        for side in ns.values():
            run("ip", "netns", "add", side)
        run("ip", "link", "add", dev["client"], "address", MACS["client"], "netns", ns["client"],
            "type", "veth", "peer", "name", dev["server"], "address", MACS["server"], "netns", ns["server"])
        run("ip", "link", "add", spare["client"], "netns", ns["client"], "type", "veth",
            "peer", "name", spare["server"], "netns", ns["server"])
        for side, other in (("client", "server"), ("server", "client")):
            n = ns[side]
            run("ip", "-n", n, "addr", "add", f"{self.ip[side]}/24", "dev", dev[side])
            for name in ("lo", dev[side], spare[side]):
                run("ip", "-n", n, "link", "set", name, "up")
            # No ARP on a lossy link; and the spare interface accepts the other side's source address.
            run("ip", "-n", n, "neigh", "replace", self.ip[other], "lladdr", MACS[other], "dev", dev[side],
                "nud", "permanent")
            run("ip", "netns", "exec", n, "sh", "-c",
                f"for i in all {spare[side]}; do echo 0 > /proc/sys/net/ipv4/conf/$i/rp_filter; done")

    def destroy(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait()
        for name in self.ns.values():
            subprocess.run(["ip", "netns", "del", name], capture_output=True)

    # --- impairment -----------------------------------------------------------------------------------

    def choose_mechanism(self) -> None:
        """netem where the kernel has it, else classic BPF filters; Unsupported if neither works."""
        forced = os.environ.get("COAPIO_NETNS_IMPAIR")
        n, dev = self.ns["client"], self.dev["client"]
        failures = []
        for mechanism in ("netem", "bpf"):
            if forced and forced != mechanism:
                continue
            try:
                if mechanism == "netem":
                    run("tc", "-n", n, "qdisc", "add", "dev", dev, "root", "netem", "loss", "0%")
                    run("tc", "-n", n, "qdisc", "del", "dev", dev, "root")
                else:
                    run("tc", "-n", n, "qdisc", "add", "dev", dev, "clsact")
                    run("tc", "-n", n, "filter", "add", "dev", dev, "ingress", "pref", "1", "bpf", "da",
                        "bytecode", udp_share_program(0.0, TC_ACT_SHOT, TC_ACT_UNSPEC))
                    run("tc", "-n", n, "qdisc", "del", "dev", dev, "clsact")
            except Unsupported as e:
                failures.append(str(e))
                continue
            self.mechanism = mechanism
            return
        raise Unsupported("no way to lose datagrams on a veth here: " + "; ".join(failures))

    def impair(self, loss: float, duplicate: float = 0.0, reorder: bool = False) -> None:
        """Lose (and duplicate) the given share of datagrams in each direction; reorder with netem only."""
        for side in ("client", "server"):
            n, dev = self.ns[side], self.dev[side]
            if self.mechanism == "netem":
                options = ["loss", f"{loss * 100:g}%"]
                if duplicate:
                    options += ["duplicate", f"{duplicate * 100:g}%"]
                if reorder:  # a quarter goes at once, the rest 10 ms later: they overtake each other
                    options += ["delay", "10ms", "reorder", "25%", "50%"]
                run("tc", "-n", n, "qdisc", "replace", "dev", dev, "root", "netem", *options)
                continue
            if reorder:
                raise Unsupported(
                    "reordering needs a delay, which only sch_netem gives, and this kernel has no netem "
                    "(CONFIG_NET_SCH_NETEM); duplication and loss are tested without it"
                )
            run("tc", "-n", n, "qdisc", "replace", "dev", dev, "clsact")
            run("tc", "-n", n, "filter", "add", "dev", dev, "ingress", "pref", "1", "bpf", "da",
                "bytecode", udp_share_program(loss, TC_ACT_SHOT, TC_ACT_UNSPEC))
            if duplicate:
                run("tc", "-n", n, "filter", "add", "dev", dev, "ingress", "pref", "2", "bpf",
                    "bytecode", udp_share_program(duplicate, TC_ACT_UNSPEC, 0),
                    "action", "mirred", "ingress", "mirror", "dev", self.spare[side])

    def drop_outgoing(self, side: str, share: float) -> None:
        """Drop a share of what ``side`` sends in its own egress path, as a full local queue would."""
        n, dev = self.ns[side], self.dev[side]
        run("tc", "-n", n, "qdisc", "replace", "dev", dev, "clsact")
        run("tc", "-n", n, "filter", "add", "dev", dev, "egress", "pref", "1", "bpf", "da",
            "bytecode", udp_share_program(share, TC_ACT_SHOT, TC_ACT_UNSPEC))

    def counters(self) -> dict[str, int]:
        """What the kernel dropped and duplicated in each direction (tc's statistics)."""
        figures: dict[str, int] = {}
        for side, direction in (("server", "to_server"), ("client", "to_client")):
            if self.mechanism == "netem":
                side = "client" if side == "server" else "server"  # netem works on the sender's egress
            n, dev = self.ns[side], self.dev[side]
            for qdisc in json.loads(run("tc", "-n", n, "-s", "-j", "qdisc", "show", "dev", dev)):
                if qdisc["kind"] in ("netem", "clsact"):
                    figures[f"dropped_{direction}"] = qdisc["drops"]
            if self.mechanism == "bpf":
                for entry in json.loads(run("tc", "-n", n, "-s", "-j", "filter", "show", "dev", dev,
                                            "ingress")):
                    for action in entry.get("options", {}).get("actions", []):
                        figures[f"duplicated_{direction}"] = action["stats"]["packets"]
        return figures

    # --- processes ------------------------------------------------------------------------------------

    def command(self, side: str, role: str, config: dict[str, Any]) -> list[str]:
        return ["ip", "netns", "exec", self.ns[side], sys.executable, SCENARIO, role, json.dumps(config)]

    def client(self, role: str, timeout: float, **config: Any) -> dict[str, Any]:
        config.update(host=SERVER_IP, port=PORT, bind=CLIENT_IP)
        result = subprocess.run(self.command("client", role, config), capture_output=True, text=True,
                                timeout=timeout)
        assert result.returncode == 0, result.stderr
        figures: dict[str, Any] = json.loads(result.stdout)
        return figures

    @contextlib.contextmanager
    def server(self, log: Path, **config: Any) -> Iterator[dict[str, Any]]:
        """Run the server for the block; the dict it yields is filled with its figures on the way out."""
        config.update(host=SERVER_IP, port=PORT)
        with log.open("w") as stderr:
            process = subprocess.Popen(self.command("server", "server", config), stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, stderr=stderr, text=True)
        self.processes.append(process)
        assert process.stdout is not None and process.stdin is not None
        if process.stdout.readline().strip() != "ready":
            process.wait(timeout=30)
            raise AssertionError(f"the server did not start: {log.read_text()}")
        figures: dict[str, Any] = {}
        yield figures
        output, _ = process.communicate(timeout=30)  # closing its stdin stops it
        assert process.returncode == 0, log.read_text()
        figures.update(json.loads(output))


def remove_stale_namespaces() -> None:
    """Namespaces of earlier runs whose process died before it could clean up (kill -9, power loss)."""
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for name, pid in re.findall(rf"^({re.escape(PREFIX)}(\d+)-[cs])\b", listing, re.M):
        if not Path(f"/proc/{pid}").exists():
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.fixture
def link(record_property: Any) -> Iterator[Link]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces and tc need root")
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (Debian package iproute2)")
    remove_stale_namespaces()
    link = Link()
    try:
        try:
            link.create()
        except Unsupported as e:
            pytest.skip(f"cannot make two namespaces joined by a veth pair here: {e}")
        try:
            link.choose_mechanism()
        except Unsupported as e:
            pytest.skip(str(e))
        record_property("impairment", link.mechanism)
        yield link
    finally:
        link.destroy()


def report(record_property: Any, title: str, figures: dict[str, Any]) -> None:
    print(f"{title}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))
    for key, value in figures.items():
        record_property(key, value)


def largest_request(count: int) -> int:
    """The encoded size of the longest request the clients send: what one PROBING_RATE hold is paid for."""
    uri = f"coap://{SERVER_IP}:{PORT}/count"
    message = Message(code=Code.POST, uri=uri, payload=str(count - 1).encode(), token=bytes(8), mid=0)
    return len(message.encode())


def run_requests(link: Link, tmp_path: Path, record_property: Any, count: int, title: str) -> dict[str, Any]:
    """``count`` CON POSTs from CLIENTS clients; checks RFC 7252's timing and exactly-once handling."""
    timing = {"ack_timeout": ACK_TIMEOUT, "probing_rate": PROBING_RATE}
    tuning = TransportTuning(ack_timeout=ACK_TIMEOUT, probing_rate=PROBING_RATE)
    with link.server(tmp_path / "server.log", **timing) as server:
        client = link.client("requests", timeout=count + 60, clients=CLIENTS, count=count, **timing)
    outcomes = client["outcomes"]
    completed = [(name, took) for name, outcome, took in outcomes if outcome == "completed"]
    gave_up = [(name, took) for name, outcome, took in outcomes if outcome == "gave up"]
    assert [o for o in outcomes if o[1] not in ("completed", "gave up")] == []
    assert len(outcomes) == count

    # RFC 7252 §4.2/§4.8: the initial timeout is in [ACK_TIMEOUT, ACK_TIMEOUT * ACK_RANDOM_FACTOR] and
    # doubles with each of MAX_RETRANSMIT retransmissions, so giving up takes 31 initial timeouts; §4.7:
    # a request to a peer that has not answered for a while may first wait for PROBING_RATE.
    fewest = tuning.ack_timeout * ((1 << (tuning.max_retransmit + 1)) - 1)
    hold = largest_request(count) / tuning.probing_rate
    for name, took in gave_up:
        assert fewest - 0.01 <= took <= tuning.max_transmit_wait + hold + SLACK, (name, took)
    for name, took in completed:
        assert took <= tuning.max_transmit_wait + hold + SLACK, (name, took)

    # Deduplication: a retransmitted or duplicated POST never runs its handler again.
    runs = server["runs"]
    assert {name: runs.get(name) for name, _ in completed if runs.get(name) != 1} == {}
    assert {name: runs[name] for name, _ in gave_up if runs.get(name, 0) > 1} == {}
    assert set(runs) <= {name for name, _, _ in outcomes}

    stats, kernel = client["stats"], link.counters()
    assert stats["timeouts"] == len(gave_up)
    # The link really lost datagrams both ways (a loss test that loses nothing proves nothing).
    assert stats["retransmissions"] > 0
    assert kernel["dropped_to_server"] > 0 and kernel["dropped_to_client"] > 0
    figures = {
        "impairment": link.mechanism,
        "requests": count,
        "completed": len(completed),
        "gave_up": len(gave_up),
        "handled_of_gave_up": sum(1 for name, _ in gave_up if name in runs),
        "client_retransmissions": stats["retransmissions"],
        "server_duplicates": server["stats"]["duplicates"],
        **kernel,
        "slowest_completed_s": round(max(took for _, took in completed), 3),
        "wall_s": round(client["wall"], 2),
    }
    report(record_property, title, figures)
    return figures


def test_con_requests_over_a_lossy_link_complete_or_give_up_in_time(
    link: Link, tmp_path: Path, record_property: Any
) -> None:
    link.impair(loss=LOSS)
    run_requests(link, tmp_path, record_property, REQUESTS, f"{LOSS:.0%} loss each way")


@pytest.mark.parametrize("reorder", [False, True], ids=["duplicate", "duplicate-reorder"])
def test_duplicated_datagrams_never_run_a_handler_twice(
    link: Link, tmp_path: Path, record_property: Any, reorder: bool
) -> None:
    try:
        link.impair(loss=LOSS, duplicate=0.1, reorder=reorder)
    except Unsupported as e:
        pytest.skip(str(e))
    figures = run_requests(link, tmp_path, record_property, REQUESTS // 2,
                           f"{LOSS:.0%} loss, 10% duplication{', reordering' if reorder else ''}")
    assert figures["server_duplicates"] > 0
    if link.mechanism == "bpf":  # netem does not count what it duplicates
        assert figures["duplicated_to_server"] > 0 and figures["duplicated_to_client"] > 0


def test_blockwise_transfers_over_a_lossy_link_arrive_intact(
    link: Link, tmp_path: Path, record_property: Any
) -> None:
    link.impair(loss=LOSS)
    upload = hashlib.sha256(seeded_body(1, BLOCK_BYTES)).hexdigest()
    blob = hashlib.sha256(seeded_body(2, BLOCK_BYTES)).hexdigest()
    timing = {"ack_timeout": 0.05, "max_retransmit": 12, "probing_rate": PROBING_RATE}
    with link.server(tmp_path / "server.log", blob_seed=2, blob_size=BLOCK_BYTES, **timing) as server:
        client = link.client("blockwise", timeout=300, upload_seed=1, size=BLOCK_BYTES, **timing)
    assert client["sent"] == upload
    assert client["echo"] == ["2.04", upload]  # Block1 up, and the same body back Block2
    assert client["blob"] == ["2.05", blob]
    assert server["echo_digests"] == [upload]  # the handler saw the whole body, once
    report(record_property, f"block-wise, {BLOCK_BYTES // 1024} KiB each way, {LOSS:.0%} loss", {
        "impairment": link.mechanism,
        "client_retransmissions": client["stats"]["retransmissions"],
        "server_duplicates": server["stats"]["duplicates"],
        **link.counters(),
        "wall_s": round(client["wall"], 2),
    })


def test_a_datagram_dropped_by_the_local_queue_is_retransmitted(link: Link) -> None:
    try:
        link.drop_outgoing("client", share=1.0)
    except Unsupported as e:
        pytest.skip(f"no tc classic-BPF filter here to drop on egress: {e}")
    tuning = TransportTuning(ack_timeout=0.02)
    result = link.client("requests", timeout=60, ack_timeout=tuning.ack_timeout, clients=1, count=1)
    [(_, outcome, took)] = result["outcomes"]
    assert (outcome, result["stats"]["retransmissions"]) == ("gave up", tuning.max_retransmit)
    assert took >= tuning.ack_timeout * 31 - 0.01


def test_probing_rate_hold_ends_when_the_peer_answers() -> None:
    """Found by the lossy-link test above (a request after a second give-up waited for the hold paid for
    the probe after the first); shown here on the sans-IO layer with explicit times."""
    peer = ("10.77.0.2", 5683)
    layer = MessageLayer(TransportTuning(nstart=5, probing_rate=1.0))

    def post(token: bytes, now: float) -> Message:
        message = Message(code=Code.POST, token=token, payload=b"x", remote=peer)
        layer.send(message, now)
        return message

    post(b"a", 0.0)  # never answered
    layer.datagrams_to_send()
    probe = post(b"b", 3.0)  # the peer has been silent for longer than ACK_TIMEOUT: a paced probe
    [(data, _)] = layer.datagrams_to_send()
    assert len(data) > 5  # so its hold lasts past 8.0
    layer.receive(Message(Type.ACK, Code.EMPTY, probe.mid).encode(), peer, 3.1)  # the peer answers
    post(b"c", 3.2)  # a new spell begins: never answered
    layer.datagrams_to_send()
    # Silent again for longer than ACK_TIMEOUT: this is the new spell's first probe, like "b" was.
    post(b"d", 8.0)
    assert len(layer.datagrams_to_send()) == 1
