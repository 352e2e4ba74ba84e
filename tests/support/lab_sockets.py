"""Plain sockets in the lab for tests that open many connections: a server that accepts everything (and holds
it) in a thread, so that no connection waits on a full backlog, and a client connection from a lab host."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

from khan.demo.lab import Lab


@contextlib.contextmanager
def holding_server(lab: Lab, host: str, ip: str, port: int) -> Iterator[None]:
    with lab.inside(host):
        server = socket.create_server((ip, port), backlog=1024)
    server.settimeout(0.1)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                held.append(server.accept()[0])

    thread = threading.Thread(target=accept)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        for sock in [server, *held]:
            sock.close()


def connect(lab: Lab, host: str, ip: str, port: int) -> socket.socket:
    """A TCP connection from `host`, handshake done."""
    with lab.inside(host):
        client = socket.socket()
    client.settimeout(10)
    client.connect((ip, port))
    return client
