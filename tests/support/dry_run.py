"""`kubectl apply --dry-run=server` against the real kube-apiserver (tests/support/kube_cluster.py), with the
`khan` namespace and the Prometheus Operator's kinds (minimal CRDs) in place: what the manifest and chart tests
send their objects to."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import yaml

from khan.demo.lab import Lab
from khan.demo.namespaces import private_prefix
from tests.support.kube_cluster import ADMIN, ApiError, Cluster, kubectl, object_path, running_cluster
from tests.support.manifests import NAMESPACE, OPERATOR_KINDS, Object, minimal_crd
from tests.support.netns import run_in


class Applier(NamedTuple):
    lab: Lab
    cluster: Cluster
    kubeconfig: Path

    def apply(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """`kubectl apply --dry-run=server` as the cluster's admin, from node1 where the API server listens."""
        argv = [kubectl(), "--kubeconfig", str(self.kubeconfig), "apply", "--dry-run=server", *args]
        return run_in(self.lab, "node1", argv, input=stdin, capture_output=True, text=True, timeout=60)

    def accepted(self, objects: Sequence[Object]) -> list[tuple[str, str]]:
        """Sends the objects; the (kind, name) of each the API server accepted, asserting it accepted all."""
        result = self.apply("-f", "-", stdin=yaml.safe_dump_all(objects))
        assert result.returncode == 0, result.stderr
        lines = [line for line in result.stdout.splitlines() if line.strip()]
        assert all(line.endswith("(server dry run)") for line in lines), result.stdout
        # "daemonset.apps/khan created (server dry run)": the kind (lower case, before its group) and the name.
        return sorted((line.split()[0].split(".")[0].split("/")[0], line.split()[0].split("/")[1]) for line in lines)


@contextlib.contextmanager
def dry_run_cluster(workdir: Path) -> Iterator[Applier]:
    with (
        Lab.create(prefix=private_prefix("khandeploy")) as lab,
        running_cluster(lab.netns("node1"), "10.250.0.1") as running,
    ):
        # A dry-run Namespace is not there for the objects that go in it (kubectl's documented limit), so it
        # exists beforehand, as it would on a second apply (and as `helm install -n khan` needs).
        running.ensure_namespace(NAMESPACE)
        for kind, plural in OPERATOR_KINDS:
            running.request("POST", object_path("CustomResourceDefinition"), minimal_crd(kind, plural))
        wait_for_kinds(running, tuple(kind for kind, _ in OPERATOR_KINDS))
        yield Applier(lab, running, running.kubeconfig(ADMIN, workdir / "kubeconfig"))


def wait_for_kinds(cluster: Cluster, kinds: tuple[str, ...], seconds: float = 20) -> None:
    """A new CRD's kind is served a moment after it is created."""
    deadline = time.monotonic() + seconds
    for kind in kinds:
        while True:
            try:
                cluster.request("GET", object_path(kind, namespace=NAMESPACE))
                break
            except ApiError as exc:
                if exc.status != 404 or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
