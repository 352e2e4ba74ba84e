"""--web-config-file: Prometheus exporter-toolkit's web configuration (the file node_exporter reads), parsed and
checked at start. Every problem is one WebConfigError line naming the key; nothing is guessed.

Supported: `tls_server_config` (cert_file, key_file, client_ca_file, client_auth_type, min_version, max_version)
and `basic_auth_users` (user: bcrypt hash). Relative paths are read from the file's own directory, as the
toolkit does. Keys the toolkit knows but khan does not implement (cipher_suites, http_server_config, ...) are
refused by name rather than silently ignored: a security setting that does nothing is worse than an error.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml


class WebConfigError(Exception):
    """The web configuration cannot be used; the message is the one line the operator sees."""


# exporter-toolkit's names -> Python's ssl verify modes. RequestClientCert and RequireAnyClientCert ask for a
# certificate without verifying it, which Python's ssl module cannot do (and which authenticates nobody).
CLIENT_AUTH_TYPES: dict[str, ssl.VerifyMode] = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
UNVERIFIED_CLIENT_AUTH_TYPES = frozenset({"RequestClientCert", "RequireAnyClientCert"})
TLS_VERSIONS: dict[str, ssl.TLSVersion] = {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
OLD_TLS_VERSIONS = frozenset({"TLS10", "TLS11"})

TOP_KEYS = frozenset({"tls_server_config", "basic_auth_users"})
TLS_KEYS = frozenset({"cert_file", "key_file", "client_ca_file", "client_auth_type", "min_version", "max_version"})
BCRYPT_PREFIXES = ("$2a$", "$2b$", "$2y$")


@dataclass(frozen=True)
class TlsServerConfig:
    cert_file: str
    key_file: str
    client_ca_file: str | None = None
    client_auth: ssl.VerifyMode = ssl.CERT_NONE
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2  # the toolkit's default too
    max_version: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED


@dataclass(frozen=True)
class WebConfig:
    tls: TlsServerConfig | None = None
    basic_auth_users: Mapping[str, bytes] = field(default_factory=dict)  # user -> bcrypt hash


def load_web_config(path: str) -> WebConfig:
    """Read and check the file; WebConfigError (one line) on any problem."""
    where = f"--web-config-file {path}"
    try:
        with open(path, encoding="utf-8") as config_file:
            document = yaml.safe_load(config_file)
    except OSError as exc:
        raise WebConfigError(f"{where}: {exc.strerror or exc}") from None
    except (yaml.YAMLError, ValueError) as exc:
        raise WebConfigError(f"{where}: not valid YAML: {_one_line(exc)}") from None
    try:
        return parse_web_config(document, os.path.dirname(os.path.abspath(path)))
    except WebConfigError as exc:
        raise WebConfigError(f"{where}: {exc}") from None


def parse_web_config(document: Any, base_dir: str) -> WebConfig:
    if document is None:
        return WebConfig()  # an empty file is the toolkit's "no TLS, no auth"
    _expect_mapping(document, "the file")
    _refuse_unknown(document, TOP_KEYS, "")
    tls = _tls(document["tls_server_config"], base_dir) if document.get("tls_server_config") is not None else None
    users = _users(document.get("basic_auth_users") or {})
    return WebConfig(tls, users)


def _tls(section: Any, base_dir: str) -> TlsServerConfig:
    _expect_mapping(section, "tls_server_config")
    _refuse_unknown(section, TLS_KEYS, "tls_server_config.")
    cert_file, key_file = _path(section, "cert_file", base_dir), _path(section, "key_file", base_dir)
    if cert_file is None or key_file is None:
        raise WebConfigError("tls_server_config needs both cert_file and key_file")
    client_ca = _path(section, "client_ca_file", base_dir)
    auth_name = _text(section, "client_auth_type") or ("RequireAndVerifyClientCert" if client_ca else "NoClientCert")
    if auth_name in UNVERIFIED_CLIENT_AUTH_TYPES:
        raise WebConfigError(
            f"tls_server_config.client_auth_type {auth_name} (a client certificate that is not verified) is not "
            "supported: use VerifyClientCertIfGiven or RequireAndVerifyClientCert with client_ca_file"
        )
    if auth_name not in CLIENT_AUTH_TYPES:
        known = ", ".join([*CLIENT_AUTH_TYPES, *sorted(UNVERIFIED_CLIENT_AUTH_TYPES)])
        raise WebConfigError(f"tls_server_config.client_auth_type must be one of {known}, got {auth_name!r}")
    client_auth = CLIENT_AUTH_TYPES[auth_name]
    if client_auth != ssl.CERT_NONE and client_ca is None:
        raise WebConfigError(f"tls_server_config.client_auth_type {auth_name} needs client_ca_file")
    minimum = _version(section, "min_version", ssl.TLSVersion.TLSv1_2)
    maximum = _version(section, "max_version", ssl.TLSVersion.MAXIMUM_SUPPORTED)
    if maximum != ssl.TLSVersion.MAXIMUM_SUPPORTED and maximum < minimum:
        raise WebConfigError("tls_server_config.max_version is below min_version")
    return TlsServerConfig(cert_file, key_file, client_ca, client_auth, minimum, maximum)


def _users(section: Any) -> dict[str, bytes]:
    _expect_mapping(section, "basic_auth_users")
    users: dict[str, bytes] = {}
    for user, hashed in section.items():
        if not isinstance(user, str) or not user or ":" in user:
            raise WebConfigError(f"basic_auth_users: {user!r} is not a user name (text without ':')")
        if not isinstance(hashed, str) or not hashed.startswith(BCRYPT_PREFIXES) or len(hashed) != 60:
            raise WebConfigError(f"basic_auth_users.{user} must be a bcrypt hash ($2b$..., 60 characters)")
        users[user] = hashed.encode("ascii")
    return users


def _version(section: Mapping[str, Any], key: str, default: ssl.TLSVersion) -> ssl.TLSVersion:
    name = _text(section, key)
    if name is None:
        return default
    if name in OLD_TLS_VERSIONS:
        raise WebConfigError(f"tls_server_config.{key} {name} is not supported: TLS12 is the oldest khan serves")
    if name not in TLS_VERSIONS:
        raise WebConfigError(f"tls_server_config.{key} must be TLS12 or TLS13, got {name!r}")
    return TLS_VERSIONS[name]


def _path(section: Mapping[str, Any], key: str, base_dir: str) -> str | None:
    value = _text(section, key)
    return None if value is None else os.path.join(base_dir, value)


def _text(section: Mapping[str, Any], key: str) -> str | None:
    value = section.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise WebConfigError(f"tls_server_config.{key} must be text, got {value!r}")
    return value


def _expect_mapping(value: Any, what: str) -> None:
    if not isinstance(value, Mapping):
        raise WebConfigError(f"{what} must be a mapping of keys to values")


def _refuse_unknown(section: Mapping[str, Any], known: frozenset[str], prefix: str) -> None:
    unknown = sorted(str(key) for key in section if key not in known)
    if unknown:
        supported = ", ".join(prefix + key for key in sorted(known))
        raise WebConfigError(f"unknown or unsupported key {prefix}{unknown[0]} (khan reads {supported})")


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())
