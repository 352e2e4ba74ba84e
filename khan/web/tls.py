"""The serving TLS context, re-read when its files change (cert-manager rotates them), without restarting the
listener: the listener's context has an SNI callback, called at every handshake (with or without a server
name), that hands the connection the freshest context. Files are looked at (stat) at most once a second; a
rotation caught half-written keeps the previous certificate until the files load again.

`self_signed()` makes an in-memory certificate for the node name, as kube-rbac-proxy does when given none: it
encrypts and lets the client authenticate itself with a token, and the scraper skips verifying the server.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NamedTuple

import structlog

from khan.web.web_config import TlsServerConfig

log = structlog.get_logger("khan.tls")

CHECK_EVERY_SECONDS = 1.0  # a rotated certificate is served within about this long
SELF_SIGNED_DAYS = 365  # the agent makes a new one at every start


class TlsError(Exception):
    """The certificate, key or CA cannot be loaded; one line."""


class FileStamp(NamedTuple):
    inode: int
    mtime_ns: int
    size: int


def build_context(config: TlsServerConfig) -> ssl.SSLContext:
    """A server context from the files as they are now; TlsError if they cannot be used."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = config.min_version
    context.maximum_version = config.max_version
    try:
        context.load_cert_chain(config.cert_file, config.key_file)
        if config.client_ca_file is not None:
            context.load_verify_locations(cafile=config.client_ca_file)
    except (OSError, ssl.SSLError) as exc:
        files = ", ".join(filter(None, (config.cert_file, config.key_file, config.client_ca_file)))
        raise TlsError(f"cannot load the TLS certificate, key or CA ({files}): {_describe(exc)}") from None
    context.verify_mode = config.client_auth
    return context


class ReloadingTls:
    """Serves `config`'s files, re-read when their inode, mtime or size changes."""

    def __init__(self, config: TlsServerConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        self._stamps = self._stat()
        self._failed_stamps: tuple[FileStamp | None, ...] | None = None  # files that failed, not tried again
        self._current = build_context(config)  # TlsError at start: the agent does not start without it
        self._checked_at = clock()
        self.reloads = 0
        # The listener's own context: the same settings (a handshake keeps the verify mode and versions of the
        # context it started with; only the certificate, key and CA store come from the one swapped in).
        self.listener = build_context(config)
        self.listener.sni_callback = self._on_hello

    def current(self) -> ssl.SSLContext:
        now = self._clock()
        if now - self._checked_at >= CHECK_EVERY_SECONDS:
            self._checked_at = now
            self._reload_if_changed()
        return self._current

    def _on_hello(self, connection: ssl.SSLObject | ssl.SSLSocket, _server_name: str | None, _: object) -> None:
        fresh = self.current()
        if fresh is not connection.context:
            connection.context = fresh

    def _reload_if_changed(self) -> None:
        stamps = self._stat()
        if stamps in (self._stamps, self._failed_stamps):
            return
        try:
            fresh = build_context(self.config)
        except TlsError as exc:  # half-written, or a key that does not match yet: tried again once a file changes
            self._failed_stamps = stamps
            log.warning("tls_reload_failed", error=str(exc), serving="the previous certificate")
            return
        self._current, self._stamps = fresh, stamps
        self.reloads += 1
        log.info("tls_reloaded", cert_file=self.config.cert_file)

    def _stat(self) -> tuple[FileStamp | None, ...]:
        paths = (self.config.cert_file, self.config.key_file, self.config.client_ca_file)
        return tuple(_stamp(path) for path in paths)


def _stamp(path: str | None) -> FileStamp | None:
    if path is None:
        return None
    try:
        found = os.stat(path)  # follows symlinks: a Secret volume swaps its ..data link
    except OSError:
        return None
    return FileStamp(found.st_ino, found.st_mtime_ns, found.st_size)


def self_signed(node_name: str, min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2) -> ssl.SSLContext:
    """A context with a fresh EC P-256 key and a certificate for `node_name`, never written to disk."""
    from cryptography import x509  # only this option pays for the import
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_name or "khan")])
    alt_names: list[x509.GeneralName] = [x509.DNSName(node_name or "khan"), x509.DNSName("localhost")]
    alt_names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ("127.0.0.1", "::1")]
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=SELF_SIGNED_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = certificate.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = min_version
    with _memory_file(pem) as path:
        context.load_cert_chain(path)
    log.info("tls_self_signed", subject=node_name, days=SELF_SIGNED_DAYS, serial=f"{certificate.serial_number:x}")
    return context


@contextmanager
def _memory_file(data: bytes) -> Iterator[str]:
    """A path to `data` for ssl's file-only loader: an anonymous memory file (the root filesystem is read-only
    in the DaemonSet), or a private temporary file where memfd_create is missing."""
    if hasattr(os, "memfd_create"):
        descriptor = os.memfd_create("khan-tls", 0)
        try:
            os.write(descriptor, data)
            yield f"/proc/self/fd/{descriptor}"
        finally:
            os.close(descriptor)
        return
    with tempfile.NamedTemporaryFile() as private:  # mode 0600
        private.write(data)
        private.flush()
        yield private.name


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror and not isinstance(exc, ssl.SSLError):
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    return " ".join(str(exc).split()) or type(exc).__name__
