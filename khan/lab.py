"""A lab of network namespaces shaped like a two-node Kubernetes cluster, for `khan demo` and the kernel tests.

Every address, route, sysctl and nftables rule lives in namespaces the lab creates and deletes again; the host's
own interfaces are never touched. Set-up is a handful of `ip -batch` and `nft -f` calls (~30 ms)::

    outside 192.0.2.10 --- 192.0.2.1 [node1] 10.250.0.1 ------- 10.250.0.2 [node2]
                                       cni0 10.244.1.1/24          cni0 10.244.2.1/24
                                       |-- pod-a 10.244.1.10       |-- pod-c 10.244.2.10
                                       `-- pod-b 10.244.1.11

Pods also have fd00:10:244:N::/64 addresses and the node link fd00:10:250::/64. Both nodes DNAT the ClusterIP
10.96.0.10:80 to pod-b:8080 in nat `prerouting` and `output` chains as kube-proxy does, and pass bridged traffic
through conntrack (`bridge-nf-call-iptables`). Nothing is masqueraded, so every pod sees the real client address.

Sockets are created in the calling thread after `setns()` into the host's namespace, and keep that namespace
after the thread switches back; the lab keeps them all until `close()`. A Lab is not thread-safe.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import select
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from khan.conntrack.namespace import entered

NETNS_DIR = Path("/run/netns")  # where `ip netns add` bind-mounts the namespaces it creates
CLONE_NEWNET = 0x40000000
WAIT_SECONDS = 3.0  # a lab round trip takes well under a millisecond; anything slower is a broken lab


class LabError(RuntimeError):
    """The lab could not be built, used or removed; the message is one line an operator can act on."""


@dataclass(frozen=True)
class Expected:
    """A conntrack entry a node's table should hold after `start_demo_traffic()` (original direction)."""

    node: str
    src_ip: str
    dst_ip: str
    dst_port: int | None
    transport: str  # "tcp" or "udp"
    state: str  # TCP state as conntrack prints it; for UDP "UNREPLIED", "REPLIED" (neither flag) or "ASSURED"
    kind: str = field(default="", compare=False)  # what the flow stands for, for people reading a demo


@dataclass(frozen=True)
class Node:
    name: str
    ipv4: str  # InternalIP, on the link between the nodes
    ipv6: str
    gateway4: str  # the cni0 bridge's addresses, the pods' default gateways
    gateway6: str
    pod_cidr4: str
    pod_cidr6: str


@dataclass(frozen=True)
class Pod:
    name: str
    node: str
    ipv4: str
    ipv6: str
    namespace: str
    labels: dict[str, str]

    @property
    def veth(self) -> str:
        return f"veth-{self.name}"  # the node's end; the pod's end is eth0


NODES = (
    Node(
        "node1", "10.250.0.1", "fd00:10:250::1", "10.244.1.1", "fd00:10:244:1::1", "10.244.1.0/24", "fd00:10:244:1::/64"
    ),
    Node(
        "node2", "10.250.0.2", "fd00:10:250::2", "10.244.2.1", "fd00:10:244:2::1", "10.244.2.0/24", "fd00:10:244:2::/64"
    ),
)
PODS = (
    Pod("pod-a", "node1", "10.244.1.10", "fd00:10:244:1::10", "shop", {"app": "web"}),
    Pod("pod-b", "node1", "10.244.1.11", "fd00:10:244:1::11", "shop", {"app.kubernetes.io/name": "api"}),
    Pod("pod-c", "node2", "10.244.2.10", "fd00:10:244:2::10", "shop", {"app": "db"}),
)
OUTSIDE_IP = "192.0.2.10"
OUTSIDE_GATEWAY = "192.0.2.1"  # node1's end of the outside link
OUTSIDE_ROUTES = ("10.244.0.0/16", "10.96.0.0/12")  # the cluster's pod and service ranges, via node1
CLUSTER_IP = "10.96.0.10"
SERVICE_PORT = 80
SERVICE_BACKEND = ("10.244.1.11", 8080)  # pod-b
HOST_NETWORK_PORT = 9100  # node-exporter-abcde listens on node1's own address
HOSTS = ("node1", "node2", "outside", *(pod.name for pod in PODS))

_NODES = {node.name: node for node in NODES}

NODE_SYSCTLS = (
    ("net/ipv4/conf/all/rp_filter", "0"),  # inherited from the host otherwise; the lab routes need no filter
    ("net/ipv4/conf/default/rp_filter", "0"),
    ("net/ipv4/ip_forward", "1"),
    ("net/ipv6/conf/all/forwarding", "1"),
    ("net/bridge/bridge-nf-call-iptables", "1"),  # bridged pod<->pod and hairpin DNAT replies reach conntrack
    ("net/bridge/bridge-nf-call-ip6tables", "1"),
    ("net/netfilter/nf_conntrack_acct", "1"),  # byte and packet counters, for flows created after this
)

NODE_RULESET = f"""
table ip khanlab {{
    chain prerouting {{
        type nat hook prerouting priority -100; policy accept;
        ip daddr {CLUSTER_IP} tcp dport {SERVICE_PORT} dnat to {SERVICE_BACKEND[0]}:{SERVICE_BACKEND[1]}
    }}
    chain output {{
        type nat hook output priority -100; policy accept;
        ip daddr {CLUSTER_IP} tcp dport {SERVICE_PORT} dnat to {SERVICE_BACKEND[0]}:{SERVICE_BACKEND[1]}
    }}
}}
table inet khanlab {{
    chain prerouting {{
        type filter hook prerouting priority 0; policy accept;
        ct state new counter
    }}
    chain output {{
        type filter hook output priority 0; policy accept;
        ct state new counter
    }}
}}
"""


def _node_commands(node: Node, netns: dict[str, str]) -> list[str]:
    """`ip -batch` lines that build one node: its bridge, the veths it owns, addresses and routes."""
    other = next(n for n in NODES if n.name != node.name)
    commands = ["link set lo up", "link add cni0 type bridge forward_delay 0 mcast_snooping 0"]
    if node is NODES[0]:  # the first node creates the shared links; their far ends appear in the other namespace
        commands += [
            f"link add eth0 type veth peer name eth0 netns {netns[other.name]}",
            f"link add ext0 type veth peer name eth0 netns {netns['outside']}",
            f"addr add {OUTSIDE_GATEWAY}/24 dev ext0",
            "link set ext0 up",
        ]
    for pod in PODS:
        if pod.node == node.name:
            commands += [
                f"link add {pod.veth} type veth peer name eth0 netns {netns[pod.name]}",
                f"link set {pod.veth} master cni0",
                f"link set {pod.veth} up",
            ]
    return [
        *commands,
        f"addr add {node.ipv4}/24 dev eth0",
        f"addr add {node.ipv6}/64 dev eth0 nodad",
        f"addr add {node.gateway4}/24 dev cni0",
        f"addr add {node.gateway6}/64 dev cni0 nodad",
        "link set eth0 up",
        "link set cni0 up",
        f"route add {other.pod_cidr4} via {other.ipv4}",
        f"route add {other.pod_cidr6} via {other.ipv6}",
    ]


def _pod_commands(pod: Pod) -> list[str]:
    node = _NODES[pod.node]
    return [
        "link set lo up",
        f"addr add {pod.ipv4}/24 dev eth0",
        f"addr add {pod.ipv6}/64 dev eth0 nodad",
        "link set eth0 up",
        f"route add default via {node.gateway4}",
        f"route add ::/0 via {node.gateway6}",
    ]


def _outside_commands() -> list[str]:
    return [
        "link set lo up",
        f"addr add {OUTSIDE_IP}/24 dev eth0",
        "link set eth0 up",
        *(f"route add {cidr} via {OUTSIDE_GATEWAY}" for cidr in OUTSIDE_ROUTES),
    ]


def _run(argv: Sequence[str], stdin: str = "") -> None:
    result = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        lines = [line for line in (result.stderr + result.stdout).splitlines() if line.strip()]
        reason = "; ".join(lines[:2]) or f"exit status {result.returncode}"
        raise LabError(f"lab set-up failed: {' '.join(argv[:4])}: {reason}")


def _delete_netns(names: Sequence[str]) -> list[str]:
    """`ip netns del` each name, tolerating those already gone; returns the names that are still there."""
    if names:
        lines = "".join(f"netns del {name}\n" for name in names)
        subprocess.run(["ip", "-force", "-batch", "-"], input=lines, capture_output=True, text=True, check=False)
    return [name for name in names if (NETNS_DIR / name).exists()]


def _named_netns() -> list[str]:
    try:
        return sorted(entry.name for entry in NETNS_DIR.iterdir())
    except FileNotFoundError:
        return []


def _existing(prefix: str) -> list[str]:
    return [name for name in _named_netns() if name.startswith(f"{prefix}-")]


def cleanup_stale(prefix: str) -> list[str]:
    """Delete namespaces named `{prefix}-*` that an earlier lab left behind; returns their names."""
    names = _existing(prefix)
    left = _delete_netns(names)
    if left:
        raise LabError(f"could not delete lab namespaces: {' '.join(left)}")
    return names


def private_prefix(stem: str) -> str:
    """A prefix no other running process uses, `{stem}{pid}`, so that two runs on one machine never meet.

    Labs of earlier `{stem}{pid}` processes that are gone (killed before their teardown) are deleted first;
    those of processes still running are theirs and stay."""
    owner = re.compile(rf"{re.escape(stem)}(\d+)-")
    orphans = {
        match.group(0)[:-1]
        for name in _named_netns()
        if (match := owner.match(name)) and not Path("/proc", match.group(1)).exists()
    }
    for orphan in sorted(orphans):
        cleanup_stale(orphan)
    return f"{stem}{os.getpid()}"


class Lab:
    """The namespaces of one lab, and every socket opened in them. Build one with `Lab.create()`."""

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix or private_prefix("khan")
        self._netns = {host: f"{self.prefix}-{host}" for host in HOSTS}
        self._created: list[str] = []
        self._listeners: dict[tuple[str, str, str, int], socket.socket] = {}  # (transport, host, ip, port)
        self._sockets: list[socket.socket] = []  # clients and accepted connections

    @classmethod
    @contextlib.contextmanager
    def create(cls, prefix: str | None = None) -> Iterator[Lab]:
        """Build the lab; it and every socket in it are gone when the block ends, however it ends."""
        lab = cls(prefix)
        try:
            lab._build()
            yield lab
        finally:
            lab.teardown()

    def netns(self, host: str) -> str:
        """The real namespace name of a lab host ("node1", "pod-a", "outside", ...)."""
        try:
            return self._netns[host]
        except KeyError:
            raise LabError(f"unknown lab host {host!r}; one of {', '.join(HOSTS)}") from None

    @contextlib.contextmanager
    def inside(self, host: str) -> Iterator[None]:
        """Run the block with the calling thread in a host's namespace (sockets opened there stay there)."""
        with entered(self.netns(host)):
            yield

    def run(self, host: str, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """`subprocess.run` of a command inside a host's namespace, through `ip netns exec`."""
        return subprocess.run(["ip", "netns", "exec", self.netns(host), *argv], **kwargs)

    # -- set-up and teardown -------------------------------------------------------------------------------

    def _build(self) -> None:
        if os.geteuid() != 0:
            raise LabError("network namespaces need root (or CAP_SYS_ADMIN and CAP_NET_ADMIN)")
        for tool in ("ip", "nft"):
            if shutil.which(tool) is None:
                raise LabError(f"the lab needs the {tool!r} command (apt-get install iproute2 nftables)")
        left = _existing(self.prefix)
        if left:
            hint = f"remove them with cleanup_stale({self.prefix!r})"
            raise LabError(f"namespaces {' '.join(left)} already exist; {hint}")
        # Remembered before they exist, so that a failure half-way still deletes whatever was made.
        self._created = [self._netns[host] for host in HOSTS]
        _run(["ip", "-batch", "-"], "".join(f"netns add {name}\n" for name in self._created))
        for node in NODES:
            with self.inside(node.name):
                for key, value in NODE_SYSCTLS:
                    Path("/proc/sys", key).write_text(value)
        for node in NODES:
            _run(["ip", "-n", self.netns(node.name), "-batch", "-"], "\n".join(_node_commands(node, self._netns)))
            _run(["ip", "netns", "exec", self.netns(node.name), "nft", "-f", "-"], NODE_RULESET)
        _run(["ip", "-n", self.netns("outside"), "-batch", "-"], "\n".join(_outside_commands()))
        for pod in PODS:
            _run(["ip", "-n", self.netns(pod.name), "-batch", "-"], "\n".join(_pod_commands(pod)))

    def close(self) -> None:
        """Close every socket the lab opened; the namespaces stay. Closed TCP flows move on to TIME_WAIT/CLOSE."""
        for sock in [*self._sockets, *self._listeners.values()]:
            sock.close()
        self._sockets.clear()
        self._listeners.clear()

    def teardown(self) -> None:
        """Close every socket and delete every namespace this lab made; safe to call more than once."""
        self.close()
        left = _delete_netns(self._created)
        self._created = []
        if left:
            raise LabError(f"could not delete lab namespaces: {' '.join(left)}")

    # -- traffic ---------------------------------------------------------------------------------------------

    def _socket(self, host: str, ip: str, kind: socket.SocketKind) -> socket.socket:
        family = socket.AF_INET6 if ipaddress.ip_address(ip).version == 6 else socket.AF_INET
        with self.inside(host):
            return socket.socket(family, kind | socket.SOCK_CLOEXEC)

    def _listen(self, transport: str, host: str, ip: str, port: int) -> socket.socket:
        key = (transport, host, ip, port)
        if key in self._listeners:
            return self._listeners[key]
        sock = self._socket(host, ip, socket.SOCK_STREAM if transport == "tcp" else socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if sock.family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((ip, port))
            if transport == "tcp":
                sock.listen(128)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise LabError(f"{host} cannot listen on {transport} {ip} port {port}: {exc.strerror}") from exc
        self._listeners[key] = sock
        return sock

    def listen_tcp(self, host: str, ip: str, port: int) -> socket.socket:
        """A TCP server socket in a host's namespace; calling it again for the same address returns the same one."""
        return self._listen("tcp", host, ip, port)

    def listen_udp(self, host: str, ip: str, port: int) -> socket.socket:
        """A UDP server socket in a host's namespace; `udp_exchange` answers from it."""
        return self._listen("udp", host, ip, port)

    def _servers(self, transport: str) -> list[socket.socket]:
        return [sock for key, sock in self._listeners.items() if key[0] == transport]

    def connect_tcp(self, host: str, dst_ip: str, dst_port: int) -> socket.socket:
        """Connect from a host and return once a lab listener accepted it: every node saw the handshake's last ACK.

        The destination (after any DNAT) must be a `listen_tcp` socket, so its conntrack entries are ESTABLISHED.
        """
        client = self._socket(host, dst_ip, socket.SOCK_STREAM)
        self._sockets.append(client)
        client.settimeout(WAIT_SECONDS)
        try:
            client.connect((dst_ip, dst_port))
        except OSError as exc:
            raise LabError(f"{host} cannot connect to {dst_ip} port {dst_port}: {exc.strerror or exc}") from exc
        local = client.getsockname()[:2]
        deadline = time.monotonic() + WAIT_SECONDS
        while (remaining := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select(self._servers("tcp"), [], [], remaining)
            for server in readable:
                with contextlib.suppress(BlockingIOError):
                    accepted, peer = server.accept()
                    self._sockets.append(accepted)
                    if peer[:2] == local:
                        return client
        raise LabError(f"no lab listener accepted {host}'s connection to {dst_ip} port {dst_port}")

    def udp_exchange(self, host: str, dst_ip: str, dst_port: int, reply: bool) -> socket.socket:
        """Send one datagram from a host to a `listen_udp` socket; with `reply`, the server answers it.

        Returns once the server received it (and, with `reply`, once the client got the answer back).
        """
        client = self._socket(host, dst_ip, socket.SOCK_DGRAM)
        self._sockets.append(client)
        client.settimeout(WAIT_SECONDS)
        token = uuid.uuid4().bytes
        try:
            client.connect((dst_ip, dst_port))
            client.send(token)
        except OSError as exc:
            raise LabError(f"{host} cannot send to {dst_ip} port {dst_port}: {exc.strerror or exc}") from exc
        deadline = time.monotonic() + WAIT_SECONDS
        while (remaining := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select(self._servers("udp"), [], [], remaining)
            for server in readable:
                with contextlib.suppress(BlockingIOError):
                    data, peer = server.recvfrom(2048)
                    if data != token:
                        continue
                    if not reply:
                        return client
                    server.sendto(b"reply:" + token, peer)
                    try:
                        client.recv(2048)
                    except OSError as exc:
                        raise LabError(f"{host} got no UDP reply from {dst_ip} port {dst_port}") from exc
                    return client
        raise LabError(f"no lab listener received {host}'s datagram to {dst_ip} port {dst_port}")

    def start_demo_traffic(self) -> list[Expected]:
        """Open one flow of each kind the exporter must attribute; returns the entries each node then holds."""
        node1, node2 = NODES
        pod_a, pod_b, pod_c = PODS
        self.listen_tcp("pod-a", pod_a.ipv4, 8080)
        self.listen_tcp("pod-b", pod_b.ipv4, 8080)
        self.listen_tcp("pod-b", pod_b.ipv6, 8080)
        self.listen_tcp("pod-c", pod_c.ipv4, 5432)
        self.listen_tcp("node1", node1.ipv4, HOST_NETWORK_PORT)
        self.listen_udp("pod-c", pod_c.ipv4, 53)
        expected: list[Expected] = []

        def tcp(client: str, src: str, dst: str, port: int, nodes: Sequence[str], kind: str) -> None:
            self.connect_tcp(client, dst, port)
            expected.extend(Expected(node, src, dst, port, "tcp", "ESTABLISHED", kind) for node in nodes)

        tcp("pod-a", pod_a.ipv4, pod_b.ipv4, 8080, ["node1"], "pod to pod, same node")
        tcp("pod-a", pod_a.ipv4, pod_c.ipv4, 5432, ["node1", "node2"], "pod to pod, across nodes")
        tcp("pod-a", pod_a.ipv4, CLUSTER_IP, SERVICE_PORT, ["node1"], "pod to ClusterIP, DNAT to pod-b")
        tcp("node1", node1.gateway4, pod_a.ipv4, 8080, ["node1"], "node's bridge gateway to pod")
        tcp("node2", node2.ipv4, pod_a.ipv4, 8080, ["node2", "node1"], "node to pod on another node")
        tcp("outside", OUTSIDE_IP, pod_a.ipv4, 8080, ["node1"], "client outside the cluster to pod")
        tcp("pod-c", pod_c.ipv4, node1.ipv4, HOST_NETWORK_PORT, ["node2", "node1"], "pod to hostNetwork pod")
        tcp("pod-a", pod_a.ipv6, pod_b.ipv6, 8080, ["node1"], "pod to pod over IPv6")
        self.udp_exchange("pod-a", pod_c.ipv4, 53, reply=True)
        # One request and one answer: the kernel clears UNREPLIED but sets ASSURED only for a packet seen
        # more than 2 s after the first (nf_conntrack_proto_udp's stream check), so conntrack prints no flag.
        expected.extend(
            Expected(node, pod_a.ipv4, pod_c.ipv4, 53, "udp", "REPLIED", "UDP pod to pod with a reply")
            for node in ("node1", "node2")
        )
        return expected

    # -- inventory -------------------------------------------------------------------------------------------

    @staticmethod
    def inventory_objects() -> list[dict[str, Any]]:
        """The lab's nodes, pods and service as `kubectl get nodes,pods,services -A -o yaml` prints them."""
        return _inventory_objects()

    @staticmethod
    def write_inventory(path: str | os.PathLike[str]) -> None:
        """Write the inventory as one `kind: List` YAML document."""
        items = _inventory_objects()
        document = {"apiVersion": "v1", "kind": "List", "items": items, "metadata": {"resourceVersion": ""}}
        Path(path).write_text(yaml.safe_dump(document, sort_keys=False))


def _metadata(kind: str, name: str, namespace: str | None, labels: dict[str, str], created: str) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    metadata["labels"] = dict(labels)
    metadata["creationTimestamp"] = created
    metadata["resourceVersion"] = "1"
    metadata["uid"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"khan-lab/{kind}/{namespace or ''}/{name}"))
    return metadata


def _pod_object(
    name: str,
    namespace: str,
    labels: dict[str, str],
    created: str,
    node: Node,
    phase: str,
    ips: Sequence[str],
    container_port: int,
    host_network: bool = False,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [
            {
                "name": "main",
                "image": "registry.k8s.io/pause:3.9",
                "ports": [{"containerPort": container_port, "protocol": "TCP"}],
            }
        ],
        "nodeName": node.name,
    }
    if host_network:
        spec["hostNetwork"] = True
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _metadata("Pod", name, namespace, labels, created),
        "spec": spec,
        "status": {
            "phase": phase,
            "hostIP": node.ipv4,
            "hostIPs": [{"ip": node.ipv4}],
            "podIP": ips[0],
            "podIPs": [{"ip": ip} for ip in ips],
        },
    }


def _inventory_objects() -> list[dict[str, Any]]:
    node1 = NODES[0]
    objects: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": _metadata(
                "Node", node.name, None, {"kubernetes.io/hostname": node.name}, "2024-05-01T08:00:00Z"
            ),
            "spec": {"podCIDR": node.pod_cidr4, "podCIDRs": [node.pod_cidr4, node.pod_cidr6]},
            "status": {
                "addresses": [{"type": "InternalIP", "address": node.ipv4}, {"type": "Hostname", "address": node.name}],
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        }
        for node in NODES
    ]
    objects.append(
        _pod_object(
            "old-job-x7k2p",
            "shop",
            {"app": "old-job"},
            "2024-05-01T09:00:00Z",
            node1,
            "Succeeded",
            [PODS[0].ipv4],
            8080,
        )
    )
    objects.extend(
        _pod_object(
            pod.name,
            pod.namespace,
            pod.labels,
            "2024-05-02T10:00:00Z",
            _NODES[pod.node],
            "Running",
            [pod.ipv4, pod.ipv6],
            5432 if pod.name == "pod-c" else 8080,
        )
        for pod in PODS
    )
    objects.append(
        _pod_object(
            "node-exporter-abcde",
            "monitoring",
            {"app": "node-exporter"},
            "2024-05-01T08:05:00Z",
            node1,
            "Running",
            [node1.ipv4],
            HOST_NETWORK_PORT,
            host_network=True,
        )
    )
    objects.append(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _metadata("Service", "web-svc", "shop", {"app": "web-svc"}, "2024-05-02T10:00:00Z"),
            "spec": {
                "type": "ClusterIP",
                "clusterIP": CLUSTER_IP,
                "clusterIPs": [CLUSTER_IP],
                "ipFamilies": ["IPv4"],
                "ipFamilyPolicy": "SingleStack",
                "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": SERVICE_BACKEND[1], "protocol": "TCP"}],
                "selector": {"app.kubernetes.io/name": "api"},
            },
            "status": {"loadBalancer": {}},
        }
    )
    return objects


# -- a bare table to fill: the 100,000-entry test and `make bench` ---------------------------------------------

FILL_SOURCES = tuple(f"10.76.0.{i}" for i in range(1, 5))  # clients, all local to the namespace
FILL_DESTINATIONS = tuple(f"10.77.0.{i}" for i in range(1, 33))
FILL_PORTS = (53, 80, 443, 5432, 6379, 8080, 9000, 11211)


@contextlib.contextmanager
def table_namespace(name: str) -> Iterator[str]:
    """A namespace whose table records flows (a `ct state new` rule) with 10.76/16 and 10.77/16 local; removed
    on exit. Unreplied UDP flows live an hour there (a sysctl of this namespace only) so a full table stays full."""
    if (NETNS_DIR / name).exists():
        raise LabError(f"network namespace {name} already exists")
    _run(["ip", "netns", "add", name])
    try:
        script = "\n".join(
            (
                "link set lo up",
                "route add local 10.76.0.0/16 dev lo",
                "route add local 10.77.0.0/16 dev lo",
            )
        )
        _run(["ip", "-n", name, "-batch", "-"], stdin=script + "\n")
        _run(["ip", "netns", "exec", name, "sysctl", "-qw", "net.netfilter.nf_conntrack_udp_timeout=3600"])
        ruleset = (
            "table inet khanfill {\n chain out {\n  type filter hook output priority 0;\n  ct state new counter\n }\n}"
        )
        _run(["ip", "netns", "exec", name, "nft", "-f", "-"], stdin=ruleset + "\n")
        yield name
    finally:
        _delete_netns([name])


def fill_udp_flows(
    netns: str,
    count: int,
    sources: Sequence[str] = FILL_SOURCES,
    destinations: Sequence[str] = FILL_DESTINATIONS,
    ports: Sequence[int] = FILL_PORTS,
) -> None:
    """`count` distinct UDP flows: client socket k (source port 20000 + k, address sources[k % len]) sends one
    datagram to every destination and port in turn, until `count` datagrams are out."""
    targets = [(d, p) for d in destinations for p in ports]
    sent, port = 0, 20000
    with entered(netns):
        while sent < count:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.bind((sources[port % len(sources)], port))
                for target in targets[: count - sent]:
                    sock.sendto(b"k", target)
                    sent += 1
            port += 1
