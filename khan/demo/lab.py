"""The lab: builds the namespaces of `topology`, opens sockets in them, and deletes it all again.

Every address, route, sysctl and nftables rule lives in namespaces the lab creates and deletes again; the host's
own interfaces are never touched. Set-up is a handful of `ip -batch` and `nft -f` calls (~30 ms).

Sockets are created in the calling thread after `setns()` into the host's namespace, and keep that namespace
after the thread switches back; the lab keeps them all until teardown. A Lab is not thread-safe.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import select
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from khan.conntrack.namespace import entered
from khan.demo.namespaces import LabError, delete_netns, netns_with_prefix, private_prefix, run_setup
from khan.demo.topology import (
    HOSTS,
    NODE_RULESET,
    NODE_SYSCTLS,
    NODES,
    NODES_BY_NAME,
    OUTSIDE_GATEWAY,
    OUTSIDE_IP,
    OUTSIDE_ROUTES,
    PODS,
    Node,
    Pod,
)

WAIT_SECONDS = 3.0  # a lab round trip takes well under a millisecond; anything slower is a broken lab


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
    node = NODES_BY_NAME[pod.node]
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

    # -- set-up and teardown -------------------------------------------------------------------------------

    def _build(self) -> None:
        if os.geteuid() != 0:
            raise LabError("network namespaces need root (or CAP_SYS_ADMIN and CAP_NET_ADMIN)")
        for tool in ("ip", "nft"):
            if shutil.which(tool) is None:
                raise LabError(f"the lab needs the {tool!r} command (apt-get install iproute2 nftables)")
        left = netns_with_prefix(self.prefix)
        if left:
            hint = f"remove them with cleanup_stale({self.prefix!r})"
            raise LabError(f"namespaces {' '.join(left)} already exist; {hint}")
        # Remembered before they exist, so that a failure half-way still deletes whatever was made.
        self._created = [self._netns[host] for host in HOSTS]
        run_setup(["ip", "-batch", "-"], "".join(f"netns add {name}\n" for name in self._created))
        for node in NODES:
            with self.inside(node.name):
                for key, value in NODE_SYSCTLS:
                    Path("/proc/sys", key).write_text(value)
        for node in NODES:
            run_setup(["ip", "-n", self.netns(node.name), "-batch", "-"], "\n".join(_node_commands(node, self._netns)))
            run_setup(["ip", "netns", "exec", self.netns(node.name), "nft", "-f", "-"], NODE_RULESET)
        run_setup(["ip", "-n", self.netns("outside"), "-batch", "-"], "\n".join(_outside_commands()))
        for pod in PODS:
            run_setup(["ip", "-n", self.netns(pod.name), "-batch", "-"], "\n".join(_pod_commands(pod)))

    def teardown(self) -> None:
        """Close every socket and delete every namespace this lab made; safe to call more than once."""
        for sock in [*self._sockets, *self._listeners.values()]:
            sock.close()
        self._sockets.clear()
        self._listeners.clear()
        left = delete_netns(self._created)
        self._created = []
        if left:
            raise LabError(f"could not delete lab namespaces: {' '.join(left)}")

    # -- sockets ---------------------------------------------------------------------------------------------

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
