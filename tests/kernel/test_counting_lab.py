"""The counters against real traffic in the lab: service transactions through an nftables `numgen` DNAT to two
backends (events catch what dumps miss), byte counters within header bounds across polls, and the JSON
endpoints' shapes, read twice (nothing is reset by a read).

The agents run in the host's namespace (`--netns` for the table only), so scraping them adds nothing to node1's
table. Every test opens its own traffic on its own ports; the lab is shared by the module."""

from __future__ import annotations

import contextlib
import copy
import ipaddress
import json
import math
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from khan.demo.inventory import inventory_objects
from khan.demo.lab import Lab
from khan.demo.namespaces import private_prefix
from tests.e2e.test_agent_http import free_port, get, wait_ready
from tests.support.exposition import KHAN, samples
from tests.support.host_agent import total
from tests.support.netns import run_in
from tests.support.scripted_traffic import recv_exactly

PREFIX = "khancountlab"
POD_A, POD_B, POD_C = "10.244.1.10", "10.244.1.11", "10.244.2.10"
API_IP, API_PORT, BACKEND_PORT = "10.96.0.20", 80, 8081

# node1 spreads new connections to 10.96.0.20:80 over pod-b and pod-c in turn, as kube-proxy's nftables mode does.
BACKENDS = f"{{ 0 : {POD_B}, 1 : {POD_C} }}"
API_DNAT = f"ip daddr {API_IP} tcp dport {API_PORT} dnat to numgen inc mod 2 map {BACKENDS} : {BACKEND_PORT}"
API_RULESET = f"""
table ip khantest {{
    chain prerouting {{
        type nat hook prerouting priority -100; policy accept;
        {API_DNAT}
    }}
    chain output {{
        type nat hook output priority -100; policy accept;
        {API_DNAT}
    }}
}}
"""
# node1 only: a closed connection's entry expires 1 s after its last packet, long before the next dump.
SHORT_TIMEOUTS = ("time_wait", "close", "fin_wait", "last_ack", "close_wait")


@dataclass
class Setup:
    lab: Lab
    inventory: Path
    workdir: Path


def api_service() -> dict[str, Any]:
    (web,) = [obj for obj in inventory_objects() if obj["kind"] == "Service"]
    service = copy.deepcopy(web)
    service["metadata"].update(name="api", labels={"app": "api"}, uid="7e0b5c1a-0c1e-4a5e-9a55-6b1f6c0a0020")
    service["spec"].update(clusterIP=API_IP, clusterIPs=[API_IP])
    service["spec"]["ports"] = [{"name": "http", "port": API_PORT, "targetPort": BACKEND_PORT, "protocol": "TCP"}]
    return service


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    workdir = tmp_path_factory.mktemp("counting-lab")
    inventory = workdir / "inventory.yaml"
    items = [*inventory_objects(), api_service()]
    document = {"apiVersion": "v1", "kind": "List", "items": items, "metadata": {"resourceVersion": ""}}
    inventory.write_text(yaml.safe_dump(document, sort_keys=False))
    # The namespaces, and with them the table and sysctls, go at the end.
    with Lab.create(prefix=private_prefix(PREFIX)) as lab:
        run_in(lab, "node1", ["nft", "-f", "-"], input=API_RULESET, text=True, check=True, capture_output=True)
        sysctls = [f"net.netfilter.nf_conntrack_tcp_timeout_{name}=1" for name in SHORT_TIMEOUTS]
        run_in(lab, "node1", ["sysctl", "-qw", *sysctls], check=True, capture_output=True)
        yield Setup(lab, inventory, workdir)


# -- the agent -----------------------------------------------------------------------------------------------


@dataclass
class Agent:
    base: str
    proc: subprocess.Popen[bytes]
    log: Path

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def get(self, path: str) -> tuple[int, str]:
        assert self.proc.poll() is None, f"agent exited: {self.tail()}"
        return get(self.base + path)

    def metrics(self) -> str:
        status, text = self.get("/metrics")
        assert status == 200, text
        return text

    def json(self, path: str) -> Any:
        status, body = self.get(path)
        assert status == 200, body
        return json.loads(body)

    def wait_poll_after(self, moment: float, seconds: float) -> str:
        """The first scrape whose poll started after `moment` (unix seconds): that poll's dump came later."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            text = self.metrics()
            if poll_started(text) > moment:
                return text
            time.sleep(0.1)
        raise AssertionError(f"no poll started after {moment} within {seconds} s\n{self.tail()}")


@contextlib.contextmanager
def running_agent(setup: Setup, interval: float, extra: Sequence[str] = ()) -> Iterator[Agent]:
    """`khan agent` on node1's table, serving on the host's loopback; stopped (SIGTERM, then SIGKILL) at the end."""
    port = free_port()
    log = setup.workdir / f"agent-{port}-{time.monotonic_ns()}.log"
    argv = [*KHAN, "agent", "--inventory", str(setup.inventory), "--node-name", "node1"]
    argv += ["--netns", setup.lab.netns("node1"), "--listen", f"127.0.0.1:{port}"]
    argv += ["--interval", str(interval), "--log-format", "json", *extra]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        agent = Agent(f"http://127.0.0.1:{port}", proc, log)
        try:
            wait_ready(agent.base, proc)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{agent.tail()}") from None
        yield agent
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=6)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def poll_started(text: str) -> float:
    """Unix time at which the poll this scrape shows started."""
    finished = total(text, "khan_last_successful_poll_timestamp_seconds")
    return finished - total(text, "khan_poll_duration_seconds") if finished else 0.0


# -- servers and clients in the pods ---------------------------------------------------------------------------


def recv_to_eof(sock: socket.socket) -> bytes:
    data = bytearray()
    while chunk := sock.recv(65536):
        data += chunk
    return bytes(data)


Handler = Callable[[socket.socket, int], None]  # (accepted connection, its index among those accepted)


@dataclass
class Server:
    """A TCP listener in a lab host: one thread accepts and counts, each connection is handled in its own."""

    sock: socket.socket
    handle: Handler
    accepted: int = 0
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _conns: list[socket.socket] = field(default_factory=list)

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if not self._stop.is_set():
                    self.errors.append(f"accept: {exc!r}")
                return
            conn.settimeout(10)
            self._conns.append(conn)
            worker = threading.Thread(target=self._serve, args=(conn, self.accepted), daemon=True)
            self.accepted += 1
            worker.start()
            self._threads.append(worker)

    def _serve(self, conn: socket.socket, index: int) -> None:
        try:
            with conn:
                self.handle(conn, index)
        except Exception as exc:
            self.errors.append(f"connection {index}: {exc!r}")

    def stop(self, accepter: threading.Thread) -> None:
        self._stop.set()
        accepter.join(5)
        self.sock.close()
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)  # wakes a handler still waiting for its client
        for worker in self._threads:
            worker.join(5)


@contextlib.contextmanager
def serving(lab: Lab, host: str, ip: str, port: int, handle: Handler) -> Iterator[Server]:
    with lab.inside(host):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((ip, port))
        sock.listen(1024)
        sock.settimeout(0.1)
    except OSError:
        sock.close()
        raise
    server = Server(sock, handle)
    accepter = threading.Thread(target=server.run, daemon=True)
    accepter.start()
    try:
        yield server
    finally:
        server.stop(accepter)


def connect(lab: Lab, host: str, ip: str, port: int) -> socket.socket:
    with lab.inside(host):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(10)
        sock.connect((ip, port))
    except OSError:
        sock.close()
        raise
    return sock


def table_lines(lab: Lab, needle: str) -> list[str]:
    """node1's table as /proc prints it (expired entries too, until the kernel reaps them and says DESTROY)."""
    with lab.inside("node1"), open("/proc/thread-self/net/nf_conntrack") as table:
        return [line for line in table if needle in line]


def wait_table_without(lab: Lab, needle: str, seconds: float = 15) -> float:
    """Wait until no entry of node1's table matches; returns the unix time it was so."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        left = table_lines(lab, needle)
        if not left:
            return time.time()
        time.sleep(0.1)
    raise AssertionError(f"node1 still holds {len(left)} entries matching {needle!r}: {left[:3]}")


# -- 1. a service DNAT'd to two backends -----------------------------------------------------------------------

REQUEST, REPLY = 64, 256
CONNECTIONS = 1000
SLOW_INTERVAL = 10.0
LEAD = 7.0  # seconds at least between the burst's start and the dumps-only agent's next dump


def answer_once(conn: socket.socket, _: int) -> None:
    recv_exactly(conn, REQUEST)
    conn.sendall(b"r" * REPLY)


def test_service_transactions_match_what_each_backend_served(setup: Setup) -> None:
    lab = setup.lab
    with (
        serving(lab, "pod-b", POD_B, BACKEND_PORT, answer_once) as pod_b,
        serving(lab, "pod-c", POD_C, BACKEND_PORT, answer_once) as pod_c,
        running_agent(setup, SLOW_INTERVAL) as events_agent,
        running_agent(setup, SLOW_INTERVAL, ["--events", "off"]) as dumps_agent,
    ):
        assert total(events_agent.metrics(), "khan_events_subscribed") == 1
        assert total(dumps_agent.metrics(), "khan_events_subscribed") == 0
        before = events_agent.metrics()
        # The burst goes between two dumps of the dumps-only agent, and its entries (1 s after their last packet,
        # SHORT_TIMEOUTS) have left the table before the second: what makes "dumps miss them" certain.
        text = dumps_agent.metrics()
        if poll_started(text) + SLOW_INTERVAL - time.time() < LEAD:
            text = dumps_agent.wait_poll_after(poll_started(text) + 1, SLOW_INTERVAL + 5)
        next_dump = poll_started(text) + SLOW_INTERVAL

        with lab.inside("pod-a"):
            for _ in range(CONNECTIONS):
                with socket.create_connection((API_IP, API_PORT), timeout=10) as client:
                    client.sendall(b"q" * REQUEST)
                    assert len(recv_to_eof(client)) == REPLY
        traffic_end = time.time()
        drained = wait_table_without(lab, f"dst={API_IP} ")  # and every DESTROY event has been sent
        assert drained + 0.5 < next_dump, "the burst outlived the poll interval on this machine"
        assert pod_b.errors == pod_c.errors == []
        served = {POD_B: pod_b.accepted, POD_C: pod_c.accepted}
        assert served[POD_B] > 0
        assert served[POD_C] > 0
        assert sum(served.values()) == CONNECTIONS

        text = events_agent.wait_poll_after(drained + 0.5, 3 * SLOW_INTERVAL)
        got = {
            kind: total(text, "khan_events_total", type=kind) - total(before, "khan_events_total", type=kind)
            for kind in ("new", "destroy")
        }
        # With its baseline taken, the agent listens to DESTROY events alone: each connection was counted by its.
        assert got["new"] == 0, got
        assert got["destroy"] >= CONNECTIONS, got
        assert total(text, "khan_events_dropped_total") == 0
        transactions = {
            dict(labels)["endpoint_ip"]: (dict(labels)["endpoint_name"], dict(labels)["endpoint_port"], value)
            for labels, value in samples(text, "khan_service_transactions_total").items()
            if dict(labels)["service_ns"] == "shop" and dict(labels)["service_name"] == "api"
        }
        assert transactions == {
            POD_B: ("pod-b", str(BACKEND_PORT), served[POD_B]),
            POD_C: ("pod-c", str(BACKEND_PORT), served[POD_C]),
        }
        opened = {"src_name": "pod-a", "dst_type": "service", "dst_ns": "shop", "dst_name": "api"}
        assert total(text, "khan_connections_opened_total", **opened, dst_port=str(API_PORT)) == CONNECTIONS
        assert {"serviceID": "shop/api", "endpointCounter": served} in events_agent.json("/transactions")

        # The dumps-only agent polled after the burst too, and found none of it.
        text = dumps_agent.wait_poll_after(traffic_end, 2 * SLOW_INTERVAL)
        missed_opened = total(text, "khan_connections_opened_total", **opened)
        missed_transactions = total(text, "khan_service_transactions_total", service_name="api")
        assert missed_opened < CONNECTIONS
        assert missed_transactions < CONNECTIONS
        for item in dumps_agent.json("/transactions"):
            if item["serviceID"] == "shop/api":
                assert sum(item["endpointCounter"].values()) < CONNECTIONS


# -- 2. byte counters within bounds ----------------------------------------------------------------------------

# conntrack counts whole IPv4 packets: 20 bytes of IP header and 20 to 60 of TCP header (52 with the timestamps
# Linux sends) on top of the payload. So for one direction of a connection:
#   lower bound: payload + 40 x (the SYN or SYN-ACK, plus at least one segment per message sent that way; a
#     message is only sent after the previous answer arrived, so two messages never share a segment). The FIN is
#     left out: it may ride on the last data segment.
#   upper bound: payload + 80 x packets, with packets counted loosely: SYN, handshake ACK, FIN and the last ACK,
#     two spare; and for every message in either direction, at most one data segment per 1,000 bytes (the MSS
#     on the lab's 1500-byte veths is 1448, GSO only makes segments bigger and fewer) each drawing at most one
#     ACK or window update the other way, doubled: 2 x ceil(size / 1000) per message.
HEADER_MIN, HEADER_MAX, SEGMENT = 40, 80, 1000
LONG_PORT, SHORT_PORT = 5440, 5441
BYTES_INTERVAL = 2.0
LONG_ROUNDS = ((3000, 1000), (20_000, 100), (500, 50_000), (64_000, 10))  # (request, reply) per poll
SHORT_CONNECTIONS = 20


def short_request(index: int) -> int:
    return 300 + 97 * index


def short_reply(request: int) -> int:
    return 2 * request + 11


@dataclass
class Bounds:
    sent_payload: int = 0
    received_payload: int = 0
    sent_messages: int = 0
    received_messages: int = 0
    segments: int = 0

    def exchange(self, request: int, reply: int) -> None:
        self.sent_payload += request
        self.received_payload += reply
        self.sent_messages += 1
        self.received_messages += 1
        self.segments += math.ceil(request / SEGMENT) + math.ceil(reply / SEGMENT)

    def check(self, sent: float, received: float, connections: int = 1) -> None:
        packets_max = 6 * connections + 2 * self.segments
        low_sent = self.sent_payload + HEADER_MIN * (connections + self.sent_messages)
        low_received = self.received_payload + HEADER_MIN * (connections + self.received_messages)
        assert low_sent <= sent <= self.sent_payload + HEADER_MAX * packets_max, (sent, self)
        assert low_received <= received <= self.received_payload + HEADER_MAX * packets_max, (received, self)


def flow_bytes(text: str, dst_name: str, port: int, direction: str) -> float:
    wanted = {"src_name": "pod-a", "dst_name": dst_name, "dst_port": str(port), "direction": direction}
    return total(text, "khan_flow_bytes_total", **wanted)


def scripted(conn: socket.socket, _: int) -> None:
    for request, reply in LONG_ROUNDS:
        recv_exactly(conn, request)
        conn.sendall(b"r" * reply)
    assert recv_to_eof(conn) == b""


def echo_double(conn: socket.socket, _: int) -> None:
    request = recv_to_eof(conn)
    conn.sendall(b"r" * short_reply(len(request)))


def test_flow_bytes_stay_within_header_bounds(setup: Setup) -> None:
    lab = setup.lab
    with (
        serving(lab, "pod-c", POD_C, LONG_PORT, scripted) as long_server,
        serving(lab, "pod-b", POD_B, SHORT_PORT, echo_double) as short_server,
        running_agent(setup, BYTES_INTERVAL) as agent,
    ):
        # A long connection to pod-c (routed through node1), one exchange per poll.
        bounds = Bounds()
        last = (0.0, 0.0)
        client = connect(lab, "pod-a", POD_C, LONG_PORT)
        with client:
            for request, reply in LONG_ROUNDS:
                client.sendall(b"q" * request)
                assert len(recv_exactly(client, reply)) == reply
                bounds.exchange(request, reply)
                text = agent.wait_poll_after(time.time(), 3 * BYTES_INTERVAL)
                now = (flow_bytes(text, "pod-c", LONG_PORT, "sent"), flow_bytes(text, "pod-c", LONG_PORT, "received"))
                assert now[0] > last[0]
                assert now[1] > last[1]  # both directions moved since the last poll, and none went back
                bounds.check(*now)
                last = now
        closed = wait_table_without(lab, f"dport={LONG_PORT} ")  # its DESTROY event carried the last bytes
        text = agent.wait_poll_after(closed + 0.5, 3 * BYTES_INTERVAL)
        final = (flow_bytes(text, "pod-c", LONG_PORT, "sent"), flow_bytes(text, "pod-c", LONG_PORT, "received"))
        assert final[0] >= last[0]
        assert final[1] >= last[1]
        bounds.check(*final)

        # Short connections to pod-b (bridged on node1), each opened and gone between two polls.
        bounds = Bounds()
        for index in range(SHORT_CONNECTIONS):
            request = short_request(index)
            with connect(lab, "pod-a", POD_B, SHORT_PORT) as short:
                short.sendall(b"q" * request)
                short.shutdown(socket.SHUT_WR)
                assert len(recv_to_eof(short)) == short_reply(request)
            bounds.exchange(request, short_reply(request))
        closed = wait_table_without(lab, f"dport={SHORT_PORT} ")
        text = agent.wait_poll_after(closed + 0.5, 3 * BYTES_INTERVAL)
        opened = total(text, "khan_connections_opened_total", src_name="pod-a", dst_name="pod-b")
        assert opened == SHORT_CONNECTIONS
        sent = flow_bytes(text, "pod-b", SHORT_PORT, "sent")
        received = flow_bytes(text, "pod-b", SHORT_PORT, "received")
        bounds.check(sent, received, connections=SHORT_CONNECTIONS)
        assert long_server.errors == short_server.errors == []
        assert (long_server.accepted, short_server.accepted) == (1, SHORT_CONNECTIONS)


# -- 3. /transactions and /flows ---------------------------------------------------------------------------------

FLOWS_PORT = 5450
HELD = (1_000, 30_000, 200_000)  # bytes each open connection sends; the server answers each with 100 bytes
SERVICE_CALLS = 4
ADDRESS = r"(?:\d{1,3}(?:\.\d{1,3}){3}|\[[0-9a-f:]+\])"
UID = re.compile(rf"^({ADDRESS}):(\d+)->({ADDRESS}):(\d+)#(\d+)$")
FLOW_KEYS = {"uid": str, "source": str, "destination": str, "value": int, "timestamp": int}


def hold_open(conn: socket.socket, index: int) -> None:
    recv_exactly(conn, HELD[index])
    conn.sendall(b"r" * 100)
    recv_to_eof(conn)


def check_flow(item: dict[str, Any]) -> None:
    assert set(item) == set(FLOW_KEYS), item
    for key, kind in FLOW_KEYS.items():
        assert type(item[key]) is kind, (key, item)
    match = UID.match(item["uid"])
    assert match, item["uid"]
    source, sport, destination, dport, first_seen = match.groups()
    assert (source.strip("[]"), destination.strip("[]")) == (item["source"], item["destination"])
    ipaddress.ip_address(item["source"])
    ipaddress.ip_address(item["destination"])
    assert 0 <= int(sport) < 65536
    assert 0 <= int(dport) < 65536
    assert item["value"] >= 0
    assert int(first_seen) <= item["timestamp"] <= time.time() + 1


def test_json_endpoints_shapes_and_nothing_reset_on_read(setup: Setup) -> None:
    lab = setup.lab
    with (
        serving(lab, "pod-b", POD_B, BACKEND_PORT, answer_once) as pod_b,
        serving(lab, "pod-c", POD_C, BACKEND_PORT, answer_once) as pod_c,
        serving(lab, "pod-c", POD_C, FLOWS_PORT, hold_open) as holder,
        running_agent(setup, 1.0) as agent,
        contextlib.ExitStack() as clients,
    ):
        ports = []
        for size in HELD:
            client = clients.enter_context(connect(lab, "pod-a", POD_C, FLOWS_PORT))
            client.sendall(b"q" * size)
            recv_exactly(client, 100)
            ports.append(client.getsockname()[1])
        for _ in range(SERVICE_CALLS):
            with connect(lab, "pod-a", API_IP, API_PORT) as client:
                client.sendall(b"q" * REQUEST)
                assert len(recv_to_eof(client)) == REPLY
        served = {POD_B: pod_b.accepted, POD_C: pod_c.accepted}
        assert sum(served.values()) == SERVICE_CALLS
        agent.wait_poll_after(time.time(), 5)

        first_transactions = agent.json("/transactions")
        first_flows = agent.json("/flows")
        second_transactions = agent.json("/transactions")
        second_flows = agent.json("/flows")

        for transactions in (first_transactions, second_transactions):
            assert isinstance(transactions, list)
            for item in transactions:
                assert set(item) == {"serviceID", "endpointCounter"}
                assert isinstance(item["serviceID"], str)
                assert re.fullmatch(r"[^/]+/[^/]+", item["serviceID"]), item
                assert all(type(count) is int and count > 0 for count in item["endpointCounter"].values()), item
        first = {item["serviceID"]: item["endpointCounter"] for item in first_transactions}
        second = {item["serviceID"]: item["endpointCounter"] for item in second_transactions}
        assert first["shop/api"] == served
        for service, counts in first.items():
            for endpoint, count in counts.items():
                assert second[service][endpoint] >= count, (service, endpoint)

        for flows in (first_flows, second_flows):
            assert isinstance(flows, list)
            for item in flows:
                check_flow(item)
            values = [item["value"] for item in flows]
            assert values == sorted(values, reverse=True)
        before = {item["uid"]: item["value"] for item in first_flows}
        after = {item["uid"]: item["value"] for item in second_flows}
        for uid, value in before.items():
            if uid in after:
                assert after[uid] >= value, uid
        held = {}  # the open connections' flows, by client port
        for item in second_flows:
            match = UID.match(item["uid"])
            assert match
            source, sport, destination, dport, _ = match.groups()
            if (source, destination, int(dport)) == (POD_A, POD_C, FLOWS_PORT):
                held[int(sport)] = item
        assert sorted(held) == sorted(ports)
        for port, size in zip(ports, HELD, strict=True):
            # `value` is both directions: `size` bytes sent, 100 back, and headers bounded as in the bytes test
            # (per direction at least SYN + one segment of 40 bytes, at most 80 bytes a packet).
            packets = 6 + 2 * (math.ceil(size / SEGMENT) + 1)
            assert size + 100 + 2 * HEADER_MIN * 2 <= held[port]["value"] <= size + 100 + 2 * HEADER_MAX * packets

        (heaviest,) = agent.json("/flows?limit=1")
        check_flow(heaviest)
        assert heaviest["uid"] == max(held.values(), key=lambda item: item["value"])["uid"]
        assert heaviest["uid"] == agent.json("/flows")[0]["uid"]
        for bad in ("0", "abc", "10001", "-1", "²", "١٢"):  # isdigit() takes the last two, int() must not
            status, body = agent.get(f"/flows?limit={urllib.parse.quote(bad)}")
            assert status == 400, (bad, body)
            assert set(json.loads(body)) == {"error"}
        assert holder.errors == pod_b.errors == pod_c.errors == []
