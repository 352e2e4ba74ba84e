"""Traffic with known sizes in the lab: a TCP server that answers each message with as many bytes as the message
asks for, a UDP server that answers only the datagrams that ask, and the clients' ways of closing (FIN or RST).

A message is an 8-byte header (the message's own size, the reply's size) and filler up to its size, so one
connection can carry any number of exchanges of any sizes, spread over as many polls as a test likes."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator

from khan.demo.lab import Lab

HEADER = struct.Struct("!II")  # (request bytes including this header, reply bytes)
LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on with 0 s: close() sends a RST
ANSWER_PLEASE = b"A"  # the first byte of a datagram that wants an answer; anything else gets none


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(min(65536, size - len(data)))
        if not chunk:
            raise ConnectionError(f"EOF after {len(data)} of {size} bytes")
        data += chunk
    return bytes(data)


class ScriptedServer:
    """A TCP listener in a lab host; each connection in its own thread answers messages until the client has
    closed (FIN) or reset it. `finished` counts connections over; `errors` lists what went wrong."""

    def __init__(self, lab: Lab, host: str, address: tuple[str, int]) -> None:
        with lab.inside(host):
            self._sock = socket.create_server(address, backlog=1024)
        self._sock.settimeout(0.1)
        self.finished = 0
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._accepter = threading.Thread(target=self._accept)
        self._accepter.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                self._fail(f"accept: {exc!r}")
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            with conn:
                conn.settimeout(30)
                while header := conn.recv(HEADER.size, socket.MSG_WAITALL):
                    request, reply = HEADER.unpack(header)
                    recv_exactly(conn, request - HEADER.size)
                    conn.sendall(b"r" * reply)
        except ConnectionResetError:
            pass  # the client's RST: how half of the tests' connections end
        except (OSError, struct.error) as exc:
            self._fail(repr(exc))
        with self._lock:
            self.finished += 1

    def _fail(self, what: str) -> None:
        with self._lock:
            self.errors.append(what)

    def close(self) -> None:
        self._stop.set()
        self._accepter.join()
        self._sock.close()


@contextlib.contextmanager
def scripted_server(lab: Lab, host: str, address: tuple[str, int]) -> Iterator[ScriptedServer]:
    server = ScriptedServer(lab, host, address)
    try:
        yield server
    finally:
        server.close()


def connect(lab: Lab, host: str, address: tuple[str, int], source_port: int = 0) -> socket.socket:
    """A TCP connection from a lab host (from `source_port` when given: the same 5-tuple again)."""
    with lab.inside(host):
        client = socket.socket()
    try:
        client.settimeout(10)
        if source_port:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            client.bind(("0.0.0.0", source_port))
        client.connect(address)
    except OSError:
        client.close()
        raise
    return client


def exchange(client: socket.socket, request: int, reply: int) -> None:
    """One message of `request` bytes (at least the header's 8) and its answer of `reply` bytes."""
    client.sendall(HEADER.pack(request, reply) + b"q" * (request - HEADER.size))
    recv_exactly(client, reply)


def close(client: socket.socket, reset: bool) -> None:
    """End a connection with a RST (its entry goes to CLOSE) or with FINs both ways (TIME_WAIT)."""
    with client:
        if reset:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
            return
        client.shutdown(socket.SHUT_WR)
        if client.recv(1) != b"":
            raise AssertionError("the server sent more than it was asked for")


class UdpResponder:
    """A UDP socket in a lab host: a datagram that starts with ANSWER_PLEASE gets an answer of the size its next
    four bytes ask for (from the same socket, so the entry becomes a stream); others get none."""

    def __init__(self, lab: Lab, host: str, address: tuple[str, int]) -> None:
        with lab.inside(host):
            self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(address)
        self._sock.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._answer)
        self._thread.start()

    def _answer(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self._sock.recvfrom(65536)
            except TimeoutError:
                continue
            if data[:1] == ANSWER_PLEASE and len(data) >= 5:
                self._sock.sendto(b"u" * struct.unpack_from("!I", data, 1)[0], peer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()


@contextlib.contextmanager
def udp_responder(lab: Lab, host: str, address: tuple[str, int]) -> Iterator[UdpResponder]:
    responder = UdpResponder(lab, host, address)
    try:
        yield responder
    finally:
        responder.close()


def udp_datagram(lab: Lab, host: str, address: tuple[str, int], size: int, answer: int | None) -> None:
    """One datagram of `size` bytes (at least 5) from a fresh source port: a new entry, one-way unless `answer`
    (a size) is given, in which case it waits for the answer."""
    with lab.inside(host):
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with client:
        client.settimeout(5)
        if answer is None:
            client.sendto(b"o" * size, address)
            return
        client.sendto(ANSWER_PLEASE + struct.pack("!I", answer) + b"a" * (size - 5), address)
        got, _ = client.recvfrom(65536)
        if len(got) != answer:
            raise AssertionError(f"asked for {answer} bytes, got {len(got)}")
