"""A real etcd and kube-apiserver, started inside a network namespace on its loopback, for tests and benchmarks.

The API server binary is built once by tests/kube/build-apiserver.sh (which `make test` runs) and cached under
~/.cache/khan. Clients authenticate with static bearer tokens; a token user named
`system:serviceaccount:NS:NAME` is what RBAC matches against a ServiceAccount subject, so deploy/'s ClusterRole
is tested exactly as a cluster would apply it. Everything started here stops when the block ends, however it
ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from khan.conntrack.namespace import entered
from tests.support import paths, tools

KUBE_VERSION = "1.20.2"
CACHE = Path(os.environ.get("KHAN_CACHE", Path.home() / ".cache" / "khan"))
APISERVER = CACHE / f"kube-apiserver-{KUBE_VERSION}"
ETCD_PORT, ETCD_PEER_PORT, API_PORT = 2379, 2380, 6443
SERVICE_CIDR = "10.96.0.0/16"
REPO = paths.REPO
DEPLOY = REPO / "deploy" / "base"

ADMIN = "admin"
KHAN_USER = "system:serviceaccount:khan:khan"  # deploy/'s ServiceAccount, as RBAC sees it


def kubectl() -> str:
    """$KHAN_KUBECTL, else `make tools`'s kubectl 1.35, else the one on PATH (build-apiserver.sh installs
    Debian's 1.20 where there is none)."""
    wanted = os.environ.get("KHAN_KUBECTL")
    found = shutil.which(wanted) if wanted else tools.installed_tool("kubectl")
    if found is None:
        raise RuntimeError(f"no kubectl at {wanted or 'kubectl'!r}: run `make tools`, which installs one")
    return found


def kubectl_minor() -> int:
    """The minor version of kubectl's client, as `kubectl version --client` reports it ("21+" counts as 21)."""
    out = subprocess.run([kubectl(), "version", "--client", "-o", "json"], capture_output=True, text=True, check=True)
    return int(json.loads(out.stdout)["clientVersion"]["minor"].rstrip("+"))


# Where each kind is created: (API prefix, plural, namespaced).
_PATHS: dict[str, tuple[str, str, bool]] = {
    "Namespace": ("/api/v1", "namespaces", False),
    "Node": ("/api/v1", "nodes", False),
    "Pod": ("/api/v1", "pods", True),
    "Service": ("/api/v1", "services", True),
    "ServiceAccount": ("/api/v1", "serviceaccounts", True),
    "ClusterRole": ("/apis/rbac.authorization.k8s.io/v1", "clusterroles", False),
    "ClusterRoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "clusterrolebindings", False),
    "DaemonSet": ("/apis/apps/v1", "daemonsets", True),
    "CustomResourceDefinition": ("/apis/apiextensions.k8s.io/v1", "customresourcedefinitions", False),
    "PodMonitor": ("/apis/monitoring.coreos.com/v1", "podmonitors", True),
    "PrometheusRule": ("/apis/monitoring.coreos.com/v1", "prometheusrules", True),
    "ServiceMonitor": ("/apis/monitoring.coreos.com/v1", "servicemonitors", True),
}


class ApiError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"{status}: {body[:500]}")
        self.status = status


def object_path(kind: str, name: str | None = None, namespace: str | None = None) -> str:
    prefix, plural, namespaced = _PATHS[kind]
    path = f"{prefix}/namespaces/{namespace}/{plural}" if namespaced else f"{prefix}/{plural}"
    return f"{path}/{name}" if name else path


@dataclass
class Cluster:
    netns: str
    workdir: Path
    advertise_address: str
    tokens: dict[str, str] = field(default_factory=dict)  # user -> token
    etcd: subprocess.Popen[bytes] | None = None
    apiserver: subprocess.Popen[bytes] | None = None

    url = f"https://127.0.0.1:{API_PORT}"
    etcd_url = f"http://127.0.0.1:{ETCD_PORT}"

    @property
    def ca(self) -> Path:
        """The API server's self-signed serving certificate, which clients trust as their CA."""
        return self.workdir / "certs" / "apiserver.crt"

    # -- processes ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_credentials()
        self.etcd = self._spawn(
            "etcd",
            [
                "etcd",
                "--data-dir", str(self.workdir / "etcd"),
                "--listen-client-urls", self.etcd_url,
                "--advertise-client-urls", self.etcd_url,
                "--listen-peer-urls", f"http://127.0.0.1:{ETCD_PEER_PORT}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{ETCD_PEER_PORT}",
                "--initial-cluster", f"default=http://127.0.0.1:{ETCD_PEER_PORT}",
            ],
        )  # fmt: skip
        self._wait(lambda: self._etcd_request("/v3/kv/range", {"key": "AA=="}) is not None, "etcd", self.etcd)
        self.start_apiserver()

    def start_apiserver(self) -> None:
        self.apiserver = self._spawn(
            "kube-apiserver",
            [
                str(APISERVER),
                "--etcd-servers", self.etcd_url,
                "--bind-address", "127.0.0.1",
                "--advertise-address", self.advertise_address,
                "--secure-port", str(API_PORT),
                "--insecure-port", "0",
                "--cert-dir", str(self.workdir / "certs"),
                "--service-account-issuer", "https://kubernetes.default.svc",
                "--service-account-key-file", str(self.workdir / "sa.key"),
                "--service-account-signing-key-file", str(self.workdir / "sa.key"),
                "--service-cluster-ip-range", SERVICE_CIDR,
                "--token-auth-file", str(self.workdir / "tokens.csv"),
                "--authorization-mode", "RBAC",
                "--disable-admission-plugins", "ServiceAccount",
                "--endpoint-reconciler-type", "none",
            ],
        )  # fmt: skip
        self._wait(self._apiserver_ready, "kube-apiserver", self.apiserver, seconds=60)

    def stop_apiserver(self) -> None:
        stop_process(self.apiserver)
        self.apiserver = None

    def pause_apiserver(self) -> None:
        """SIGSTOP: connections stay open and go silent, as with a hung server or a dropped network path."""
        assert self.apiserver is not None
        self.apiserver.send_signal(signal.SIGSTOP)

    def resume_apiserver(self) -> None:
        assert self.apiserver is not None
        self.apiserver.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.apiserver is not None:
            with contextlib.suppress(OSError):
                self.apiserver.send_signal(signal.SIGCONT)
        stop_process(self.apiserver)
        stop_process(self.etcd)
        self.apiserver = self.etcd = None

    # -- etcd --------------------------------------------------------------------------------------------------

    def etcd_revision(self) -> int:
        answer = self._etcd_request("/v3/kv/range", {"key": "AA=="})
        assert answer is not None, "etcd did not answer"
        return int(answer["header"]["revision"])

    def compact(self) -> int:
        """Compact etcd at its current revision: every older resourceVersion is gone for good. Returns it."""
        revision = self.etcd_revision()
        answer = self._etcd_request("/v3/kv/compaction", {"revision": revision, "physical": True})
        assert answer is not None, "etcd refused the compaction"
        return revision

    # -- the API -----------------------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        user: str = ADMIN,
        content_type: str = "application/json",
    ) -> Any:
        """One API call as `user`; the decoded answer, or ApiError with the status."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.tokens[user]}")
        if data is not None:
            request.add_header("Content-Type", content_type)
        context = ssl.create_default_context(cafile=str(self.ca))
        with entered(self.netns):
            try:
                with urllib.request.urlopen(request, context=context, timeout=30) as response:
                    answer = response.read()
                    is_json = response.headers.get_content_type() == "application/json"
                    return json.loads(answer) if is_json else answer.decode()
            except urllib.error.HTTPError as exc:
                raise ApiError(exc.code, exc.read().decode(errors="replace")) from None

    def create(self, obj: Mapping[str, Any], user: str = ADMIN) -> Any:
        """Create an object; a pod's or service's status is then written through the status subresource, since
        no kubelet or controller runs to write it."""
        meta = obj["metadata"]
        kind = obj["kind"]
        body = {key: value for key, value in obj.items() if key != "status"}
        body["metadata"] = {key: meta[key] for key in ("name", "namespace", "labels", "ownerReferences") if key in meta}
        if kind == "Node":
            body["status"] = obj.get("status", {})  # nodes take their status on create
        created = self.request("POST", object_path(kind, namespace=meta.get("namespace")), body, user)
        if kind in ("Pod", "Service") and obj.get("status"):
            created = self.patch_status(kind, meta["name"], meta.get("namespace"), obj["status"])
        return created

    def patch(self, kind: str, name: str, namespace: str | None, patch: Mapping[str, Any]) -> Any:
        path = object_path(kind, name, namespace)
        return self.request("PATCH", path, patch, content_type="application/merge-patch+json")

    def patch_status(self, kind: str, name: str, namespace: str | None, status: Mapping[str, Any]) -> Any:
        path = object_path(kind, name, namespace) + "/status"
        return self.request("PATCH", path, {"status": status}, content_type="application/merge-patch+json")

    def delete(self, kind: str, name: str, namespace: str | None = None) -> Any:
        # No kubelet confirms a pod's end, so a pod is deleted at once (grace period 0) as `kubectl delete
        # --force` would.
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0}
        return self.request("DELETE", object_path(kind, name, namespace), body)

    def ensure_namespace(self, name: str) -> None:
        with contextlib.suppress(ApiError):
            self.request("POST", "/api/v1/namespaces", {"kind": "Namespace", "metadata": {"name": name}})

    def apply_files(self, paths: Sequence[Path], rename: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        """Create every object of these YAML files (rename: old name -> new name of cluster-scoped objects)."""
        created = []
        for path in paths:
            for document in yaml.safe_load_all(path.read_text()):
                if not document:
                    continue
                document = json.loads(json.dumps(document))
                name = document["metadata"]["name"]
                if rename and name in rename:
                    document["metadata"]["name"] = rename[name]
                if document["kind"] == "Namespace":
                    self.ensure_namespace(document["metadata"]["name"])
                    continue
                created.append(self.create(document))
        return created

    def kubeconfig(self, user: str, path: Path) -> Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "lab", "cluster": {"server": self.url, "certificate-authority": str(self.ca)}}],
            "users": [{"name": user, "user": {"token": self.tokens[user]}}],
            "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": user}}],
            "current-context": "lab",
        }
        path.write_text(yaml.safe_dump(config))
        return path

    # -- internals ---------------------------------------------------------------------------------------------

    def _write_credentials(self) -> None:
        subprocess.run(
            ["openssl", "genrsa", "-out", str(self.workdir / "sa.key"), "2048"], check=True, capture_output=True
        )
        rows = []
        for index, (user, token) in enumerate(sorted(self.tokens.items())):
            groups = "system:masters" if user == ADMIN else "system:serviceaccounts"
            rows.append(f'{token},{user},uid-{index},"{groups}"')
        (self.workdir / "tokens.csv").write_text("\n".join(rows) + "\n")

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("ab")
        return subprocess.Popen(["ip", "netns", "exec", self.netns, *argv], stdout=log, stderr=log)

    def _wait(self, ready: Any, name: str, process: subprocess.Popen[bytes] | None, seconds: float = 30) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}: see {self.workdir / (name + '.log')}")
            if ready():
                return
            time.sleep(0.2)
        raise RuntimeError(f"{name} not ready after {seconds} s: see {self.workdir / (name + '.log')}")

    def _apiserver_ready(self) -> bool:
        if not self.ca.exists():
            return False
        try:
            self.request("GET", "/readyz")
        except (ApiError, OSError, ssl.SSLError):
            return False
        return True

    def _etcd_request(self, path: str, body: Mapping[str, Any]) -> Any:
        request = urllib.request.Request(self.etcd_url + path, data=json.dumps(body).encode(), method="POST")
        with entered(self.netns):
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    return json.loads(response.read())
            except OSError:
                return None


def stop_process(process: subprocess.Popen[Any] | None) -> None:
    """SIGTERM, then SIGKILL after 10 s; nothing if it is already gone."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def require_apiserver() -> None:
    """etcd, kube-apiserver and kubectl, as `make apiserver` (part of `make test`) provides them; the tools
    policy says what a missing one does."""
    if not APISERVER.exists():
        tools.missing(f"{APISERVER} is missing: run `make apiserver` (make test does)")
    tools.require_tool("etcd", "etcd-server (make apiserver)")
    try:
        kubectl()
    except RuntimeError as exc:
        tools.missing(str(exc))


@contextlib.contextmanager
def running_cluster(
    netns: str, advertise_address: str, users: Sequence[str] = (KHAN_USER,), workdir: Path | None = None
) -> Iterator[Cluster]:
    """etcd and kube-apiserver on the loopback of `netns`, with an admin user and these token users."""
    require_apiserver()
    with contextlib.ExitStack() as stack:
        if workdir is None:
            # tmpfs: etcd's fsyncs cost nothing there, which keeps object creation fast.
            base = "/dev/shm" if os.path.isdir("/dev/shm") else None
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="khan-kube-", dir=base)))
        tokens = {user: f"token-{index}-{os.urandom(8).hex()}" for index, user in enumerate((ADMIN, *users))}
        cluster = Cluster(netns=netns, workdir=workdir, advertise_address=advertise_address, tokens=tokens)
        stack.callback(cluster.stop)
        cluster.start()
        yield cluster
