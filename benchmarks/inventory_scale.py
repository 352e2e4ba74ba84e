"""`make bench`: the API inventory at scale: 50,000 pods, 5,000 services and 1,000 nodes created through a real
kube-apiserver, then the agent's time to ready and its memory, against the same agent on the empty cluster.

Everything runs in a network namespace made for the purpose (etcd and the API server on its loopback, data on
tmpfs) and is removed on exit. Reports medians of RUNS agent starts for each case, plus the index's own memory
(tracemalloc of the watch cache after the three lists, client library excluded) and the cost of one rebuild.
Run as root, after `make apiserver`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.support.kube_cluster

from benchmarks.proc_stats import status_mib
from khan.conntrack.namespace import entered
from khan.inventory.api_config import ApiConfig
from tests.support.kube_cluster import ADMIN, KHAN_USER, Cluster, object_path, running_cluster
from tests.support.table_fill import table_namespace

PODS, SERVICES, NODES = 50_000, 5_000, 1_000
RUNS = 3
CONCURRENCY = 64
NETNS = f"khankube{os.getpid()}"
ADVERTISE = "10.255.255.1"
AGENT_PORT = 9986
RESULTS = Path(__file__).parent / "results"
DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "base"


# -- the synthetic cluster: 50 pods a node, each Deployment's pods spread over nodes ----------------------------


def node_object(index: int) -> dict[str, Any]:
    name = f"node-{index:04d}"
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "topology.kubernetes.io/zone": "z1"}},
        "spec": {"podCIDR": f"10.{64 + index // 256}.{index % 256}.0/24"},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": f"172.16.{index // 256}.{index % 256}"},
                {"type": "Hostname", "address": name},
            ]
        },
    }


def pod_objects(index: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The pod to create, and the status a kubelet would write."""
    node = index % NODES
    deployment = f"app-{index // 10:04d}"  # 10 replicas each
    template_hash = "7d4b9c8f5"
    name = f"{deployment}-{template_hash}-{index:05d}"
    namespace = f"team-{index % 20:02d}"
    slot = index // NODES  # 0..49 on each node
    ip = f"10.{64 + node // 256}.{node % 256}.{10 + slot}"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app": deployment, "pod-template-hash": template_hash, "tier": "backend"},
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": f"{deployment}-{template_hash}",
                    "uid": f"00000000-0000-0000-0000-{index // 10:012d}",
                    "controller": True,
                }
            ],
        },
        "spec": {
            "nodeName": f"node-{node:04d}",
            "containers": [
                {
                    "name": "main",
                    "image": "registry.example/app:1.2.3",
                    "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                    "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                }
            ],
        },
    }
    status = {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": f"172.16.{node // 256}.{node % 256}"}
    return pod, status


def service_object(index: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": f"svc-{index:04d}", "namespace": f"team-{index % 20:02d}", "labels": {"app": "svc"}},
        "spec": {"ports": [{"port": 80, "targetPort": 8080}], "selector": {"app": f"app-{index:04d}"}},
    }


async def send_object(
    session: aiohttp.ClientSession, url: str, method: str, path: str, body: dict[str, Any], content_type: str
) -> None:
    """One write to the API server; an object that already exists is fine, a busy server is retried."""
    for attempt in range(5):
        async with session.request(
            method, url + path, data=json.dumps(body), headers={"Content-Type": content_type}
        ) as response:
            if response.status < 300 or response.status == 409:
                return
            if response.status not in (429, 500, 503, 504) or attempt == 4:
                raise RuntimeError(f"{method} {path}: {response.status} {await response.text()}")
        await asyncio.sleep(0.5 * (attempt + 1))


async def populate(cluster: Cluster) -> float:
    """Create every object with CONCURRENCY requests in flight; returns the seconds it took."""
    context = ssl.create_default_context(cafile=str(cluster.ca))
    headers = {"Authorization": f"Bearer {cluster.tokens[ADMIN]}"}
    started = time.perf_counter()
    async with aiohttp.ClientSession(
        headers=headers, connector=aiohttp.TCPConnector(ssl=context, limit=CONCURRENCY)
    ) as session:
        queue: asyncio.Queue[tuple[str, str, dict[str, Any], str]] = asyncio.Queue()

        async def send(method: str, path: str, body: dict[str, Any], content_type: str) -> None:
            await send_object(session, cluster.url, method, path, body, content_type)

        async def worker() -> None:
            while True:
                method, path, body, content_type = await queue.get()
                try:
                    await send(method, path, body, content_type)
                finally:
                    queue.task_done()

        async def run(batch: list[tuple[str, str, dict[str, Any], str]]) -> None:
            for item in batch:
                queue.put_nowait(item)
            await queue.join()

        workers = [asyncio.create_task(worker()) for _ in range(CONCURRENCY)]
        post = "application/json"
        merge = "application/merge-patch+json"
        namespaces = sorted({f"team-{index:02d}" for index in range(20)})
        await run([("POST", "/api/v1/namespaces", {"metadata": {"name": ns}}, post) for ns in namespaces])
        await run([("POST", object_path("Node"), node_object(index), post) for index in range(NODES)])
        await run(
            [("POST", object_path("Service", namespace=svc["metadata"]["namespace"]), svc, post) for svc in
             map(service_object, range(SERVICES))]
        )  # fmt: skip
        for start in range(0, PODS, 5_000):
            pods = [pod_objects(index) for index in range(start, min(PODS, start + 5_000))]
            await run([("POST", object_path("Pod", namespace=p["metadata"]["namespace"]), p, post) for p, _ in pods])
            await run(
                [
                    (
                        "PATCH",
                        object_path("Pod", p["metadata"]["name"], p["metadata"]["namespace"]) + "/status",
                        {"status": status},
                        merge,
                    )
                    for p, status in pods
                ]
            )
        for task in workers:
            task.cancel()
    return time.perf_counter() - started


# -- measurements ------------------------------------------------------------------------------------------------


def agent_start(cluster: Cluster, kubeconfig: Path) -> tuple[float, float, float]:
    """Start `khan agent`; (seconds to /readyz 200, RSS in MB once ready, series count)."""
    argv = [sys.executable, "-m", "khan", "agent", "--kubeconfig", str(kubeconfig), "--node-name", "bench"]
    argv += ["--listen", f"127.0.0.1:{AGENT_PORT}", "--log-level", "warning"]
    started = time.perf_counter()
    process = subprocess.Popen(["ip", "netns", "exec", NETNS, *argv], stdout=subprocess.DEVNULL)
    try:
        deadline = started + 120
        while time.perf_counter() < deadline:
            if process.poll() is not None:
                raise SystemExit(f"agent exited with {process.returncode}")
            if get("/readyz")[0] == 200:
                ready = time.perf_counter() - started
                break
            time.sleep(0.05)
        else:
            raise SystemExit("agent not ready within 120 s")
        rss = status_mib(process.pid)
        addresses = metric(get("/metrics")[1], "khan_inventory_addresses")
        return ready, rss, addresses
    finally:
        process.terminate()
        process.wait(timeout=15)


def get(path: str, netns: str = NETNS, port: int = AGENT_PORT) -> tuple[int, str]:
    with entered(netns):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, ""
        except OSError:
            return 0, ""


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise SystemExit(f"{name} not served")


def index_memory(kubeconfig: Path) -> tuple[float, float, float, int]:
    """(MB the watch cache and its inventory hold, MB peak while listing, seconds per rebuild, addresses), measured
    in this process with the client library already imported, so only khan's own structures count."""
    from khan.inventory.kube import ApiInventory

    async def listed() -> ApiInventory:
        inventory = ApiInventory(ApiConfig(str(kubeconfig), "--kubeconfig"), 120.0, 300.0)
        await inventory.start()
        gc.collect()
        tracemalloc.start()
        await inventory.list_once()
        inventory.current()
        return inventory

    with entered(NETNS):
        inventory = asyncio.run(listed())
    gc.collect()
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rebuilds = []
    for _ in range(RUNS):
        inventory.cache._dirty = True  # the cost the poller pays once after any number of events
        started = time.perf_counter()
        built = inventory.current()
        rebuilds.append(time.perf_counter() - started)
    return held / 2**20, peak / 2**20, statistics.median(rebuilds), len(built)


def measure(cluster: Cluster, kubeconfig: Path) -> list[tuple[float, float, float]]:
    return [agent_start(cluster, kubeconfig) for _ in range(RUNS)]


@contextlib.contextmanager
def khan_cluster(netns: str, workdir: Path) -> Iterator[Cluster]:
    """etcd and kube-apiserver inside `netns` (a namespace the caller made), at ADVERTISE there, with khan's
    namespace, ServiceAccount and RBAC applied; stopped whatever happens."""
    subprocess.run(["ip", "-n", netns, "addr", "add", f"{ADVERTISE}/32", "dev", "lo"], check=True)
    with running_cluster(netns, ADVERTISE, workdir=workdir) as cluster:
        cluster.apply_files([DEPLOY / f"{name}.yaml" for name in RBAC])
        yield cluster


def main() -> None:
    if os.geteuid() != 0:
        raise SystemExit("the benchmark needs root (it builds a network namespace)")
    with (
        table_namespace(NETNS),
        tempfile.TemporaryDirectory(prefix="khan-bench-", dir="/dev/shm") as workdir,
        khan_cluster(NETNS, Path(workdir)) as cluster,
    ):
        kubeconfig = cluster.kubeconfig(KHAN_USER, Path(workdir) / "kubeconfig")
        empty = measure(cluster, kubeconfig)
        with entered(NETNS):
            populate_seconds = asyncio.run(populate(cluster))
        full = measure(cluster, kubeconfig)
        held, peak, rebuild, addresses = index_memory(kubeconfig)
    report(empty, full, populate_seconds, held, peak, rebuild, addresses)


RBAC = ("namespace", "serviceaccount", "clusterrole", "clusterrolebinding")


def report(
    empty: list[tuple[float, float, float]],
    full: list[tuple[float, float, float]],
    populate_seconds: float,
    held: float,
    peak: float,
    rebuild: float,
    addresses: int,
) -> None:
    def med(rows: list[tuple[float, float, float]], column: int) -> float:
        return statistics.median(row[column] for row in rows)

    lines = [
        f"cluster: {PODS:,} pods, {SERVICES:,} services, {NODES:,} nodes created through kube-apiserver 1.20.2"
        f" in {populate_seconds:.0f} s; agent as deploy/'s ServiceAccount; medians of {RUNS} agent starts",
        "",
        "| agent against | start to /readyz (median) | RSS once ready (median) | addresses indexed |",
        "| --- | --- | --- | --- |",
        f"| empty cluster (baseline) | {med(empty, 0):.2f} s | {med(empty, 1):.0f} MB | {med(empty, 2):.0f} |",
        f"| the cluster above | {med(full, 0):.2f} s | {med(full, 1):.0f} MB | {med(full, 2):.0f} |",
        "",
        f"ready: {med(full, 0):.1f} s (target <= 30 s); RSS over the baseline: {med(full, 1) - med(empty, 1):.0f} MB",
        f"index (watch cache + inventory, tracemalloc): {held:.1f} MB held, {peak:.1f} MB peak while listing"
        f" (target <= 60 MB); {addresses:,} addresses",
        f"one inventory rebuild after a change (at most one per poll): {rebuild * 1000:.0f} ms",
    ]
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "inventory_scale.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
