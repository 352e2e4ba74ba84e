"""Which Kubernetes API to use, decided without importing the client library (that costs ~70 MB and 2 s).

In order: an explicit --kubeconfig; the pod's service account when KUBERNETES_SERVICE_HOST is set (in a
cluster); the files KUBECONFIG names; ~/.kube/config. An explicit flag or variable that names no readable file is
an error; no configuration at all is not (the caller decides what that means).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


class ApiConfigError(Exception):
    """The configuration that was asked for cannot be used; the message says which and why."""


@dataclass(frozen=True)
class ApiConfig:
    kubeconfig: str | None  # a path, or several joined by os.pathsep as in KUBECONFIG; None: in-cluster
    origin: str  # how it was found, for the log: "--kubeconfig", "in-cluster", "KUBECONFIG", "~/.kube/config"

    @property
    def in_cluster(self) -> bool:
        return self.kubeconfig is None


def find_api_config(kubeconfig: str | None, environ: Mapping[str, str] | None = None) -> ApiConfig | None:
    environ = os.environ if environ is None else environ
    if kubeconfig:
        if not _readable_file(kubeconfig):
            raise ApiConfigError(f"--kubeconfig {kubeconfig}: no readable file there")
        return ApiConfig(kubeconfig, "--kubeconfig")
    if environ.get("KUBERNETES_SERVICE_HOST"):
        return ApiConfig(None, "in-cluster")
    listed = environ.get("KUBECONFIG", "")
    if listed:
        readable = [path for path in listed.split(os.pathsep) if path and _readable_file(path)]
        if not readable:
            raise ApiConfigError(f"KUBECONFIG={listed}: names no readable file")
        return ApiConfig(os.pathsep.join(readable), "KUBECONFIG")
    default = Path(environ.get("HOME") or Path.home()) / ".kube" / "config"
    if _readable_file(str(default)):
        return ApiConfig(str(default), "~/.kube/config")
    return None


def _readable_file(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.R_OK)
