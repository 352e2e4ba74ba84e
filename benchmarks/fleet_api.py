"""Sizing a fleet: the load N agents put on one kube-apiserver, simulated against the real one.

Each simulated agent does what khan's API inventory does (khan/inventory/reflector.py): it lists pods, services
and nodes cluster-wide in pages of 500, then watches each from the list's resourceVersion with bookmarks on, one
HTTP/1.1 connection per watch (as kubernetes_asyncio over aiohttp opens them): three watch connections an agent.
The agents are light asyncio clients in this process (a real agent costs ~90 MB, too many for one machine); the
API server sees the same requests.

Measured, on a cluster of NODES nodes with PODS_PER_NODE pods each and SERVICES services:
- list storms: K agents listing everything at once (a DaemonSet rollout with maxUnavailable 10% restarts a tenth
  of the agents together): the time each agent waits for its lists, and the server's CPU during the storm;
- watch fan-out: with N agents watching, pod changes made through the API, and the events the agents received
  per change and how long the last agent waited for it; the server's RSS and CPU with N watchers idle.
Everything runs in a network namespace made for the purpose (etcd and the API server on its loopback, data on
tmpfs) and is removed on exit. Run as root, after `make apiserver`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import ssl
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.support

from benchmarks.inventory_scale import khan_cluster, node_object, pod_objects, send_object, service_object
from benchmarks.proc_stats import cpu_seconds, status_mib
from khan.conntrack.namespace import entered
from tests.support.kube_cluster import ADMIN, KHAN_USER, Cluster, object_path
from tests.support.table_fill import table_namespace

NETNS = f"khanfleet{os.getpid()}"
RESOURCES = ("pods", "services", "nodes")
LIST_PATHS = {"pods": "/api/v1/pods", "services": "/api/v1/services", "nodes": "/api/v1/nodes"}
PAGE_SIZE = 500  # khan's (reflector.PAGE_SIZE)
WATCH_TIMEOUT = 300  # khan's --watch-timeout default; streams outlive every step here
RESULTS = Path(__file__).parent / "results"


# -- the API server process ------------------------------------------------------------------------------------


# -- one simulated agent -----------------------------------------------------------------------------------------


@dataclass
class Agent:
    """One agent's three watches: events received by type, and when each pod event arrived."""

    index: int
    events: dict[str, int] = field(default_factory=dict)
    pod_arrivals: dict[str, float] = field(default_factory=dict)  # pod name of the last MODIFIED -> when
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


REFUSED = [0]  # 429 answers to list requests, all agents together
HEAD = re.compile(rb'"metadata":\{[^{}]*?"resourceVersion":"(\d+)"(?:,"continue":"([^"]*)")?')


async def list_all(session: aiohttp.ClientSession, url: str, resource: str, limit: int = PAGE_SIZE) -> tuple[str, int]:
    """Every page of one resource; (the list's resourceVersion, bytes received). Only the list's own metadata
    is decoded (it comes before the items): the client's CPU goes to reading, not to parsing what it drops."""
    token, received = "", 0
    while True:
        params: dict[str, Any] = {"limit": limit}
        if token:
            params["continue"] = token
        body = b""
        for attempt in range(12):
            async with session.get(url + LIST_PATHS[resource], params=params) as response:
                if response.status == 200:
                    body = await response.read()
                    break
                if response.status != 429:
                    raise RuntimeError(f"list {resource}: {response.status} {await response.text()}")
                # Over --max-requests-inflight: khan waits for Retry-After or its backoff (0.5 s doubling), longer.
                REFUSED[0] += 1
                wait = max(float(response.headers.get("Retry-After", "1")), 0.5 * 2**attempt)
            await asyncio.sleep(min(wait, 30))
        else:
            raise RuntimeError(f"list {resource}: refused 12 times")
        received += len(body)
        head = HEAD.search(body, 0, 4096)
        if head is None:
            raise RuntimeError(f"list {resource}: no metadata in {body[:200]!r}")
        token = (head.group(2) or b"").decode()
        if not token or limit < PAGE_SIZE:
            return head.group(1).decode(), received


async def list_everything(
    session: aiohttp.ClientSession, url: str, limit: int = PAGE_SIZE
) -> tuple[dict[str, str], int]:
    """The three lists as khan makes them at start (concurrently, one reflector each); their resourceVersions and
    the bytes received. `limit` 1: just the current resourceVersions."""
    answers = await asyncio.gather(*(list_all(session, url, resource, limit) for resource in RESOURCES))
    versions = {resource: version for resource, (version, _) in zip(RESOURCES, answers, strict=True)}
    return versions, sum(size for _, size in answers)


async def watch(
    session: aiohttp.ClientSession, url: str, resource: str, version: str, agent: Agent, opened: asyncio.Event
) -> None:
    params = {
        "watch": "true",
        "resourceVersion": version,
        "allowWatchBookmarks": "true",
        "timeoutSeconds": str(WATCH_TIMEOUT),
    }
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    async with session.get(url + LIST_PATHS[resource], params=params, timeout=timeout) as response:
        if response.status != 200:
            raise RuntimeError(f"watch {resource}: {response.status}")
        opened.set()
        async for line in response.content:
            now = time.perf_counter()
            event = json.loads(line)
            kind = f"{resource}:{event['type']}"
            agent.events[kind] = agent.events.get(kind, 0) + 1
            if resource == "pods" and event["type"] == "MODIFIED":
                agent.pod_arrivals[event["object"]["metadata"]["name"]] = now


async def start_agent(session: aiohttp.ClientSession, url: str, agent: Agent, versions: dict[str, str]) -> None:
    """Open the three watches from these resourceVersions; returns once all three have answered. (The full lists
    are measured by list_storm: listing everything for every agent here would take the machine minutes.)"""
    opened = []
    for resource in RESOURCES:
        event = asyncio.Event()
        agent.tasks.append(asyncio.create_task(watch(session, url, resource, versions[resource], agent, event)))
        opened.append(event)
    await asyncio.gather(*(event.wait() for event in opened))


# -- the measurements --------------------------------------------------------------------------------------------


def session_for(cluster: Cluster, connections: int) -> aiohttp.ClientSession:
    context = ssl.create_default_context(cafile=str(cluster.ca))
    headers = {"Authorization": f"Bearer {cluster.tokens[KHAN_USER]}"}
    # One connection per request in flight, as many agents would have; no limit but what is asked for.
    connector = aiohttp.TCPConnector(ssl=context, limit=connections, force_close=False)
    return aiohttp.ClientSession(headers=headers, connector=connector)


async def list_storm(cluster: Cluster, pid: int, agents: int) -> dict[str, float]:
    """`agents` agents listing everything at once, each on connections of its own."""
    sessions = [session_for(cluster, 3) for _ in range(agents)]
    try:
        cpu0, started = cpu_seconds(pid), time.perf_counter()
        REFUSED[0] = 0

        async def one(session: aiohttp.ClientSession) -> tuple[float, int]:
            began = time.perf_counter()
            _, received = await list_everything(session, cluster.url)
            return time.perf_counter() - began, received

        answers = await asyncio.gather(*(one(session) for session in sessions))
        waits = [wait for wait, _ in answers]
        wall = time.perf_counter() - started
        cpu = cpu_seconds(pid) - cpu0
    finally:
        await asyncio.gather(*(session.close() for session in sessions))
    return {
        "agents": agents,
        "median_s": statistics.median(waits),
        "max_s": max(waits),
        "wall_s": wall,
        "server_cpu_s": cpu,
        "server_rss_mb": status_mib(pid),
        "bytes_per_agent": answers[0][1],
        "refused_429": REFUSED[0],
    }


async def pod_changes(cluster: Cluster, admin: aiohttp.ClientSession, names: list[tuple[str, str]], tag: str) -> None:
    """One status patch per pod (a label-free change the watchers all receive as MODIFIED), back to back."""
    for namespace, name in names:
        path = f"/api/v1/namespaces/{namespace}/pods/{name}/status"
        body = {"status": {"conditions": [{"type": "Ready", "status": "True", "reason": tag}]}}
        async with admin.patch(
            cluster.url + path, data=json.dumps(body), headers={"Content-Type": "application/merge-patch+json"}
        ) as response:
            if response.status != 200:
                raise RuntimeError(f"patch {name}: {response.status} {await response.text()}")


async def fan_out(
    cluster: Cluster, pid: int, steps: list[int], changes: int, pods: list[tuple[str, str]]
) -> list[dict[str, float]]:
    """Grow the fleet of watching agents step by step; at each step, idle server load and a burst of changes."""
    rows: list[dict[str, float]] = []
    agents: list[Agent] = []
    sessions: list[aiohttp.ClientSession] = []
    context = ssl.create_default_context(cafile=str(cluster.ca))
    admin = aiohttp.ClientSession(
        headers={"Authorization": f"Bearer {cluster.tokens[ADMIN]}"},
        connector=aiohttp.TCPConnector(ssl=context, limit=4),
    )
    try:
        for step, target in enumerate(steps):
            started = time.perf_counter()
            while len(agents) < target:  # join in batches of 50, as a rollout would bring them
                batch = [Agent(len(agents) + i) for i in range(min(50, target - len(agents)))]
                batch_sessions = [session_for(cluster, 3) for _ in batch]
                sessions += batch_sessions
                versions, _ = await list_everything(batch_sessions[0], cluster.url, limit=1)
                await asyncio.gather(
                    *(start_agent(s, cluster.url, a, versions) for s, a in zip(batch_sessions, batch, strict=True))
                )
                agents += batch
            joined = time.perf_counter() - started
            await asyncio.sleep(3)
            cpu0 = cpu_seconds(pid)
            await asyncio.sleep(10)
            idle_cpu = (cpu_seconds(pid) - cpu0) / 10
            idle_rss = status_mib(pid)
            # The burst: `changes` pods changed one after another; every agent must see each once.
            for agent in agents:
                agent.pod_arrivals.clear()
            before = sum(a.events.get("pods:MODIFIED", 0) for a in agents)
            chosen = pods[(step * changes) % len(pods) :][:changes]
            cpu0, sent = cpu_seconds(pid), time.perf_counter()
            await pod_changes(cluster, admin, chosen, f"step{step}")
            patched = time.perf_counter()
            deadline = patched + 60
            wanted = {name for _, name in chosen}
            while time.perf_counter() < deadline:
                if all(wanted <= agent.pod_arrivals.keys() for agent in agents):
                    break
                await asyncio.sleep(0.05)
            done = time.perf_counter()
            burst_cpu = cpu_seconds(pid) - cpu0
            received = sum(a.events.get("pods:MODIFIED", 0) for a in agents) - before
            complete = sum(1 for agent in agents if wanted <= agent.pod_arrivals.keys())
            last_arrivals = [max(agent.pod_arrivals.values()) for agent in agents if agent.pod_arrivals]
            crashed = sum(1 for agent in agents for task in agent.tasks if task.done())
            rows.append(
                {
                    "agents": len(agents),
                    "watches": 3 * len(agents) - crashed,
                    "join_s": joined,
                    "idle_cpu_share": idle_cpu,
                    "idle_rss_mb": idle_rss,
                    "changes": len(chosen),
                    "patch_s": patched - sent,
                    "events_per_change": received / len(chosen),
                    "agents_complete": complete,
                    "all_delivered_s": done - sent,
                    "last_event_after_patches_s": (max(last_arrivals) - patched) if last_arrivals else -1,
                    "burst_cpu_s": burst_cpu,
                    "client_cpu_s": time.process_time(),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
            if crashed or complete < len(agents):
                break  # past what this server (or this client) serves here
    finally:
        for agent in agents:
            for task in agent.tasks:
                task.cancel()
        await asyncio.gather(*(t for a in agents for t in a.tasks), return_exceptions=True)
        await asyncio.gather(*(session.close() for session in sessions), admin.close())
    return rows


# -- the cluster: inventory_scale.py's objects, PODS_PER_NODE pods on each of `nodes` nodes ----------------------


def fleet_pod(index: int, nodes: int) -> tuple[dict[str, Any], dict[str, Any]]:
    pod, status = pod_objects(index)
    node = index % nodes
    pod["spec"]["nodeName"] = f"node-{node:04d}"
    status["hostIP"] = f"172.16.{node // 256}.{node % 256}"
    return pod, status


def pod_names(count: int, nodes: int) -> list[tuple[str, str]]:
    return [(p["metadata"]["namespace"], p["metadata"]["name"]) for p, _ in (fleet_pod(i, nodes) for i in range(count))]


async def populate_objects(cluster: Cluster, pods: int, services: int, nodes: int) -> None:
    """Every object created (and each pod's status written) with 32 requests in flight."""
    context = ssl.create_default_context(cafile=str(cluster.ca))
    headers = {"Authorization": f"Bearer {cluster.tokens[ADMIN]}"}
    connector = aiohttp.TCPConnector(ssl=context, limit=32)
    async with aiohttp.ClientSession(headers=headers, connector=connector) as session:
        gate = asyncio.Semaphore(32)

        async def send(method: str, path: str, body: dict[str, Any], content_type: str) -> None:
            async with gate:
                await send_object(session, cluster.url, method, path, body, content_type)

        post, merge = "application/json", "application/merge-patch+json"
        await asyncio.gather(
            *(send("POST", "/api/v1/namespaces", {"metadata": {"name": f"team-{i:02d}"}}, post) for i in range(20))
        )
        await asyncio.gather(*(send("POST", object_path("Node"), node_object(i), post) for i in range(nodes)))
        await asyncio.gather(
            *(
                send("POST", object_path("Service", namespace=s["metadata"]["namespace"]), s, post)
                for s in map(service_object, range(services))
            )
        )
        for start in range(0, pods, 2_000):
            batch = [fleet_pod(i, nodes) for i in range(start, min(pods, start + 2_000))]
            await asyncio.gather(
                *(send("POST", object_path("Pod", namespace=p["metadata"]["namespace"]), p, post) for p, _ in batch)
            )
            await asyncio.gather(
                *(
                    send(
                        "PATCH",
                        object_path("Pod", p["metadata"]["name"], p["metadata"]["namespace"]) + "/status",
                        {"status": status},
                        merge,
                    )
                    for p, status in batch
                )
            )


async def run(cluster: Cluster, args: argparse.Namespace) -> dict[str, Any]:
    assert cluster.apiserver is not None
    pid = cluster.apiserver.pid
    pods = args.nodes * args.pods_per_node
    began = time.perf_counter()
    await populate_objects(cluster, pods, args.services, args.nodes)
    populated = time.perf_counter() - began
    await asyncio.sleep(2)
    baseline_rss = status_mib(pid)
    cpu0 = cpu_seconds(pid)
    await asyncio.sleep(5)
    baseline_cpu = (cpu_seconds(pid) - cpu0) / 5
    storms = [await list_storm(cluster, pid, agents) for agents in args.storms]
    for row in storms:
        print(json.dumps(row), flush=True)
    fan = await fan_out(cluster, pid, args.steps, args.changes, pod_names(pods, args.nodes))
    return {
        "cluster": {"nodes": args.nodes, "pods": pods, "services": args.services, "populate_s": populated},
        "baseline": {"rss_mb": baseline_rss, "cpu_share": baseline_cpu},
        "storms": storms,
        "fan_out": fan,
    }


def report(result: dict[str, Any]) -> str:
    c, b = result["cluster"], result["baseline"]
    lines = [
        f"cluster: {c['nodes']:,} nodes, {c['pods']:,} pods, {c['services']:,} services (kube-apiserver 1.20.2, etcd"
        f" on tmpfs; created in {c['populate_s']:.0f} s); server idle: RSS {b['rss_mb']:.0f} MB,"
        f" CPU {100 * b['cpu_share']:.1f}% of a core",
        "",
        "| agents listing at once | each agent's lists: median | max | server CPU in the storm | server RSS after |"
        " 429 answers |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for s in result["storms"]:
        lines.append(
            f"| {s['agents']:,} | {s['median_s']:.2f} s | {s['max_s']:.2f} s | {s['server_cpu_s']:.1f} s"
            f" ({s['server_cpu_s'] / s['agents'] * 1000:.0f} ms an agent) | {s['server_rss_mb']:.0f} MB |"
            f" {s['refused_429']} |"
        )
    if result["storms"]:
        per = result["storms"][0]["bytes_per_agent"]
        lines.append(f"\none agent's three lists: {per / 2**20:.1f} MiB ({per / max(1, c['pods']):.0f} B a pod)")
    lines += [
        "",
        "| agents watching (watches) | server RSS, idle | server CPU, idle | watch events per pod change |"
        " agents that got every change | all delivered after | server CPU per change |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for f in result["fan_out"]:
        lines.append(
            f"| {f['agents']:,} ({f['watches']:,}) | {f['idle_rss_mb']:.0f} MB | {100 * f['idle_cpu_share']:.1f}% |"
            f" {f['events_per_change']:.0f} | {f['agents_complete']:,} | {f['all_delivered_s']:.2f} s for"
            f" {f['changes']} changes | {f['burst_cpu_s'] / f['changes'] * 1000:.0f} ms |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--pods-per-node", type=int, default=30)
    parser.add_argument("--services", type=int, default=600)
    parser.add_argument("--storms", type=int, nargs="*", default=[1, 10, 50, 150])
    parser.add_argument("--steps", type=int, nargs="*", default=[100, 500, 1000, 2000, 3000])
    parser.add_argument("--changes", type=int, default=20)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("the benchmark needs root (it builds a network namespace)")
    with (
        table_namespace(NETNS),
        tempfile.TemporaryDirectory(prefix="khan-fleet-", dir="/dev/shm") as workdir,
        khan_cluster(NETNS, Path(workdir)) as cluster,
        entered(NETNS),
    ):
        result = asyncio.run(run(cluster, args))
    text = report(result)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "fleet_api.md").write_text(text + "\n")
    (RESULTS / "fleet_api.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
