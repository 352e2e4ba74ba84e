"""A real `khan agent` serving on the loopback of a private, empty network namespace (its table is empty, so
polls are instant), and a client for it that speaks HTTP or HTTPS with or without credentials; a test CA made
with `cryptography`."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from khan.conntrack.namespace import entered
from tests.support.exposition import KHAN
from tests.support.kube_cluster import stop_process

PORT = 9986
EMPTY_INVENTORY = "apiVersion: v1\nkind: List\nitems: []\n"


@contextlib.contextmanager
def private_netns(name: str, address: str | None = None) -> Iterator[str]:
    """An empty namespace with its loopback up (and `address` on it); deleted at the end."""
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        if address:
            subprocess.run(["ip", "-n", name, "addr", "add", f"{address}/32", "dev", "lo"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


@dataclass
class Agent:
    process: subprocess.Popen[bytes]
    netns: str
    log_path: Path
    scheme: str

    def request(
        self,
        path: str,
        headers: Mapping[str, str] | None = None,
        context: ssl.SSLContext | None = None,
        timeout: float = 10,
        nodelay: bool = False,
    ) -> tuple[int, dict[str, list[str]], bytes]:
        """One request on a new connection: (status, headers by lower-case name, body). `nodelay` disables Nagle's
        algorithm, as Go's clients (Prometheus, the kubelet) do."""
        with entered(self.netns):
            raw = socket.create_connection(("127.0.0.1", PORT), timeout=timeout)
        if nodelay:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with contextlib.ExitStack() as stack:
            sock: socket.socket = stack.enter_context(raw)
            if self.scheme == "https":
                sock = stack.enter_context((context or insecure()).wrap_socket(raw, server_hostname="localhost"))
            lines = [f"GET {path} HTTP/1.1", "Host: localhost", "Connection: close"]
            lines += [f"{key}: {value}" for key, value in (headers or {}).items()]
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        if not answer:  # TLS 1.3 refuses a client certificate after the client's side of the handshake
            raise ConnectionResetError("closed without an answer")
        head, _, body = answer.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        found: dict[str, list[str]] = {}
        for line in header_lines:
            key, _, value = line.partition(":")
            found.setdefault(key.strip().lower(), []).append(value.strip())
        return int(status_line.split()[1]), found, body

    def status(self, path: str, **kwargs: object) -> int:
        return self.request(path, **kwargs)[0]  # type: ignore[arg-type]

    def coalesced_request(self, path: str, close: bool = False, timeout: float = 5) -> bytes:
        """The handshake's last message, a request (and, with `close`, the TLS close) sent in one segment, as a
        client without Nagle's algorithm often does: what comes back (the answer's head, or b"")."""
        tls = insecure().wrap_bio(incoming := ssl.MemoryBIO(), outgoing := ssl.MemoryBIO(), server_side=False)
        with entered(self.netns):
            raw = socket.create_connection(("127.0.0.1", PORT), timeout=timeout)
        with raw:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    raw.sendall(outgoing.read())
                    incoming.write(raw.recv(65536))
            tls.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
            if close:
                with contextlib.suppress(ssl.SSLWantReadError):
                    tls.unwrap()
            raw.sendall(outgoing.read())
            answer = b""
            with contextlib.suppress(OSError):
                while b"\r\n\r\n" not in answer and (chunk := raw.recv(65536)):
                    incoming.write(chunk)
                    with contextlib.suppress(ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                        while data := tls.read(65536):
                            answer += data
        return answer

    def peer_serial(self) -> int:
        with entered(self.netns):
            raw = socket.create_connection(("127.0.0.1", PORT), timeout=5)
        with raw, insecure().wrap_socket(raw, server_hostname="localhost") as tls:
            der = tls.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der).serial_number

    def log(self) -> list[dict[str, object]]:
        lines = self.log_path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def wait_ready(self, seconds: float = 30, **kwargs: object) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log_path.read_text()[-3000:]
            with contextlib.suppress(OSError):
                if self.status("/readyz", **kwargs) == 200:
                    return
            time.sleep(0.1)
        raise AssertionError(f"not ready in {seconds} s: {self.log_path.read_text()[-3000:]}")


@contextlib.contextmanager
def running_agent(netns: str, workdir: Path, extra: Sequence[str], scheme: str = "https") -> Iterator[Agent]:
    inventory = workdir / "inventory.yaml"
    inventory.write_text(EMPTY_INVENTORY)
    log_path = workdir / f"agent-{time.monotonic_ns()}.log"
    argv = [*KHAN, "agent", "--inventory", str(inventory), "--node-name", "node1", "--listen", f"127.0.0.1:{PORT}"]
    argv += ["--interval", "1", "--log-format", "json", "--events", "off", *extra]
    with log_path.open("wb") as log:
        process = subprocess.Popen(["ip", "netns", "exec", netns, *argv], stdout=log, stderr=log)
    try:
        yield Agent(process, netns, log_path, scheme)
    finally:
        stop_process(process)


def insecure() -> ssl.SSLContext:
    """What the PodMonitor does (insecureSkipVerify): encrypt, do not verify the server."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@dataclass
class LabCa:
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate
    path: Path

    @classmethod
    def create(cls, directory: Path, name: str = "khan test CA") -> LabCa:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(*[False] * 5, True, True, False, False), critical=True)  # cert + CRL sign
            .sign(key, hashes.SHA256())
        )
        path = directory / f"{name.replace(' ', '-')}.crt"
        path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        return cls(key, certificate, path)

    def issue(self, cert_path: Path, key_path: Path, name: str, server: bool = True) -> int:
        """A leaf certificate and its key, written to the two paths; returns its serial number."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if server:
            names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        certificate = builder.sign(self.key, hashes.SHA256())
        cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return certificate.serial_number

    def client_context(self, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
        """A client that verifies the server against this CA, presenting `cert` if given."""
        context = ssl.create_default_context(cafile=str(self.path))
        if cert is not None:
            context.load_cert_chain(str(cert), str(key))
        return context
