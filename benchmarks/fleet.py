"""Sizing a fleet: one node's exposition, measured from the real agent, and many nodes' expositions through one
Prometheus.

1. Shapes. A private network namespace plays one typical node: 30 pods of 10 Deployments on it, 270 more on 9
   other nodes, 20 Services, and the traffic such a node carries, as real TCP connections (each pod calls 3
   Services, 2 pods elsewhere and one outside API; 4 pods elsewhere and the kubelet's probe call each pod; DNS over
   UDP; 100 outside clients call the 3 ingress pods). Addresses are all local to the namespace (`route add
   local`), so each connection is one conntrack entry with the addresses the inventory names. The real agent
   (file inventory) runs with each combination of `--aggregate workload` and `--external-ips drop`; the
   connections are opened after it starts, so every family carries series; its /metrics is scraped plain and
   gzipped. Reported: series per node (all, and khan's connection families) and bytes per scrape.
2. Prometheus. Debian's Prometheus 2.42 on the namespace's loopback scrapes N targets (127.x.y.z:9986, one
   listener serving every address) that each serve one recorded exposition of step 1, gzip as Prometheus asks.
   Reported after a warm-up: head series, samples appended per second, Prometheus's RSS and CPU, scrape duration.

Run as root. Bounded: about 4 minutes with the defaults, and up to 8 GB for Prometheus at 1,000 targets. Every
process and the namespace go when it ends.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.support

from benchmarks.proc_stats import cpu_seconds, status_mib
from khan.conntrack.namespace import entered
from khan.demo.namespaces import NETNS_DIR, delete_netns, run_setup
from tests.support.exposition import KHAN
from tests.support.kube_cluster import stop_process

NETNS = f"khanfleet{os.getpid()}"
AGENT_PORT, PROMETHEUS_PORT, TARGET_PORT = 9986, 9090, 9986
RESULTS = Path(__file__).parent / "results"
CONNECTION_FAMILIES = ("khan_connection", "khan_connections_opened", "khan_flow_bytes", "khan_service_transactions")

# -- the typical node ----------------------------------------------------------------------------------------------

NODES = 10
DEPLOYMENTS = 10  # 3 replicas on the measured node, 27 elsewhere
PODS_PER_NODE = 30
SERVICES = 20
EXTERNAL_CLIENTS = 100
EXTERNAL_APIS = 5
NODE = "node-00"
SERVICE_PORTS = (80, 5432, 6379, 8080)
INGRESS_PORT, DNS_PORT, API_PORT = 8443, 53, 443


def node_ip(node: int) -> str:
    return f"10.250.0.{node + 1}"


def pod_ip(node: int, slot: int) -> str:
    return f"10.244.{node}.{10 + slot}"


def service_ip(index: int) -> str:
    return f"10.96.0.{10 + index}"


def external_client(index: int) -> str:
    return f"203.0.113.{1 + index}"


def external_api(index: int) -> str:
    return f"198.51.100.{1 + index}"


def inventory() -> dict[str, Any]:
    """The cluster as `kubectl get nodes,pods,services -A -o yaml` prints it."""
    items: list[dict[str, Any]] = []
    for node in range(NODES):
        name = f"node-{node:02d}"
        items.append(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
                "spec": {"podCIDR": f"10.244.{node}.0/24"},
                "status": {"addresses": [{"type": "InternalIP", "address": node_ip(node)}]},
            }
        )
        for slot in range(PODS_PER_NODE):
            deployment = f"app-{slot % DEPLOYMENTS:02d}"
            namespace = f"team-{slot % DEPLOYMENTS % 3}"
            name = f"{deployment}-7d4b9c8f5-{node:02d}{slot:03d}"
            items.append(
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {
                        "name": name,
                        "namespace": namespace,
                        "labels": {"app": deployment, "pod-template-hash": "7d4b9c8f5"},
                        "ownerReferences": [
                            {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": f"{deployment}-7d4b9c8f5",
                             "uid": f"uid-{deployment}", "controller": True}
                        ],
                    },
                    "spec": {"nodeName": f"node-{node:02d}", "containers": [{"name": "main"}]},
                    "status": {"phase": "Running", "podIP": pod_ip(node, slot), "podIPs": [{"ip": pod_ip(node, slot)}],
                               "hostIP": node_ip(node)},
                }
            )  # fmt: skip
    for index in range(SERVICES):
        items.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": f"svc-{index:02d}", "namespace": f"team-{index % 3}"},
                "spec": {
                    "type": "ClusterIP",
                    "clusterIP": service_ip(index),
                    "clusterIPs": [service_ip(index)],
                    "ports": [{"port": SERVICE_PORTS[index % len(SERVICE_PORTS)], "protocol": "TCP"}],
                    "selector": {"app": f"app-{index % DEPLOYMENTS:02d}"},
                },
            }
        )
    return {"apiVersion": "v1", "kind": "List", "items": items, "metadata": {"resourceVersion": ""}}


def replica(deployment: int, node: int, which: int) -> str:
    """The address of one of a Deployment's 3 replicas on a node (slots d, d + 10, d + 20)."""
    return pod_ip(node, deployment + DEPLOYMENTS * (which % 3))


def connections() -> list[tuple[str, str, int]]:
    """(source, destination, port) of every TCP connection the measured node carries. Replicas of one Deployment
    call the same Services and workloads, each reaching its own peer pods, as a Deployment's replicas do."""
    wanted: list[tuple[str, str, int]] = []
    for slot in range(PODS_PER_NODE):
        me, deployment = pod_ip(0, slot), slot % DEPLOYMENTS
        for k in range(3):  # 3 Services
            index = (deployment * 3 + k) % SERVICES
            wanted.append((me, service_ip(index), SERVICE_PORTS[index % len(SERVICE_PORTS)]))
        for k in range(2):  # 2 pods elsewhere, of 2 other workloads
            callee = (deployment + 1 + k) % DEPLOYMENTS
            wanted.append((me, replica(callee, 1 + (slot + k) % (NODES - 1), slot // DEPLOYMENTS + k), 5432))
        wanted.append((me, external_api(deployment % EXTERNAL_APIS), API_PORT))
        for k in range(4):  # called by 4 pods elsewhere, of 2 other workloads
            caller = (deployment + 5 + k % 2) % DEPLOYMENTS
            wanted.append((replica(caller, 1 + (slot + k) % (NODES - 1), k), me, 8080))
        wanted.append((node_ip(0), me, 8080))  # the kubelet's probe
    for index in range(EXTERNAL_CLIENTS):  # to the ingress Deployment's 3 replicas here
        wanted.append((external_client(index), replica(0, 0, index), INGRESS_PORT))
    return wanted


def backends(service: int) -> list[str]:
    """A Service's endpoints: 3 replicas of the Deployment it selects, on nodes 1 to 3."""
    return [replica(service % DEPLOYMENTS, node, node) for node in (1, 2, 3)]


def nat_ruleset() -> str:
    """kube-proxy's part for TCP: each ClusterIP DNAT'd to one of its endpoints in turn (the port unchanged)."""
    rules = []
    for index in range(SERVICES):
        ends = ", ".join(f"{i} : {address}" for i, address in enumerate(backends(index)))
        rules.append(f"  ip daddr {service_ip(index)} meta l4proto tcp dnat to numgen inc mod 3 map {{ {ends} }}")
    return (
        "table ip khanfleetnat {\n chain out {\n  type nat hook output priority -100;\n" + "\n".join(rules) + "\n }\n}"
    )


def dns_queries() -> list[tuple[str, str, int]]:
    return [(pod_ip(0, slot), service_ip(0), DNS_PORT) for slot in range(PODS_PER_NODE)]


@contextlib.contextmanager
def node_namespace() -> Iterator[str]:
    if (NETNS_DIR / NETNS).exists():
        raise SystemExit(f"network namespace {NETNS} already exists")
    run_setup(["ip", "netns", "add", NETNS])
    try:
        script = ["link set lo up"] + [
            f"route add local {cidr} dev lo" for cidr in ("10.0.0.0/8", "203.0.113.0/24", "198.51.100.0/24")
        ]
        run_setup(["ip", "-n", NETNS, "-batch", "-"], stdin="\n".join(script) + "\n")
        run_setup(["ip", "netns", "exec", NETNS, "sysctl", "-qw", "net.netfilter.nf_conntrack_acct=1"])
        ruleset = (
            "table inet khanfleet {\n chain out {\n  type filter hook output priority 0;\n  ct state new counter\n }\n}"
        )
        run_setup(["ip", "netns", "exec", NETNS, "nft", "-f", "-"], stdin=ruleset + "\n" + nat_ruleset() + "\n")
        yield NETNS
    finally:
        delete_netns([NETNS])


class Traffic:
    """Listeners on every port used, then the node's connections opened, each with one exchange of bytes."""

    def __init__(self) -> None:
        self.sockets: list[socket.socket] = []
        self.stop = threading.Event()
        with entered(NETNS):
            ports = {port for _, _, port in connections()}
            self.listeners = [socket.create_server(("0.0.0.0", port), backlog=1024) for port in sorted(ports)]
            self.dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.dns.bind((service_ip(0), DNS_PORT))  # answers from the address asked, as through kube-proxy
        self.accepted: list[socket.socket] = []
        self.threads = [threading.Thread(target=self._accept, args=(s,), daemon=True) for s in self.listeners]
        for thread in self.threads:
            thread.start()

    def _accept(self, listener: socket.socket) -> None:
        listener.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.sendall(b"r" * 2048)
            self.accepted.append(conn)

    def open(self) -> None:
        with entered(NETNS):
            for source, destination, port in connections():
                client = socket.socket()
                client.bind((source, 0))
                client.connect((destination, port))
                client.sendall(b"q" * 512)
                self.sockets.append(client)
            for source, destination, port in dns_queries():
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                    client.bind((source, 0))
                    client.sendto(b"q" * 40, (destination, port))
                    _, peer = self.dns.recvfrom(512)
                    self.dns.sendto(b"a" * 120, peer)

    def close(self) -> None:
        for sock in self.sockets + self.accepted:
            sock.close()
        self.sockets.clear()
        self.accepted.clear()
        run_setup(["ip", "netns", "exec", NETNS, "conntrack", "-F"])

    def shutdown(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()
        self.close()
        for listener in self.listeners:
            listener.close()
        self.dns.close()


def get(path: str, port: int = AGENT_PORT, gzipped: bool = False) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if gzipped:
        request.add_header("Accept-Encoding", "gzip")
    with entered(NETNS):
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read()
        except OSError:
            return 0, b""


def polls(text: str) -> float:
    for line in text.splitlines():
        if line.startswith("khan_polls_total"):
            return float(line.split()[-1])
    return 0.0


def most_labels(text: str) -> int:
    """The most labels any sample carries, `__name__` included (what Prometheus's label_limit counts, with the
    target's own labels added)."""
    return max((1 + line.split("} ", 1)[0].count('="') for line in text.splitlines() if line[:1] not in "#"), default=1)


def count_series(text: str) -> dict[str, int]:
    found: dict[str, int] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        for suffix in ("_total", "_created", "_bucket", "_sum", "_count"):
            if name.endswith(suffix) and name.removesuffix(suffix) in CONNECTION_FAMILIES:
                name = name.removesuffix(suffix)
        found[name] = found.get(name, 0) + 1
    return found


def shape(workdir: Path, traffic: Traffic, flags: list[str]) -> dict[str, Any]:
    """The agent with these flags: its exposition once every connection has been seen for a few polls."""
    path = workdir / "inventory.yaml"
    log = (workdir / "agent.log").open("ab")
    argv = [*KHAN, "agent", "--inventory", str(path), "--node-name", NODE, "--interval", "1"]
    argv += ["--listen", f"127.0.0.1:{AGENT_PORT}", "--log-level", "warning", *flags]
    process = subprocess.Popen(["ip", "netns", "exec", NETNS, *argv], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while get("/readyz")[0] != 200:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"agent not ready: see {workdir / 'agent.log'}")
            time.sleep(0.1)
        traffic.open()
        start = polls(get("/metrics")[1].decode())
        while polls(get("/metrics")[1].decode()) < start + 4:
            time.sleep(0.2)
        text = get("/metrics")[1]
        gz = get("/metrics", gzipped=True)[1]
        counts = count_series(text.decode())
        return {
            "flags": " ".join(flags) or "(defaults)",
            "series": sum(counts.values()),
            "connection_series": sum(counts.get(name, 0) for name in CONNECTION_FAMILIES),
            "families": {name: counts.get(name, 0) for name in CONNECTION_FAMILIES},
            "bytes": len(text),
            "gzip_bytes": len(gz),
            "most_labels": most_labels(text.decode()),
            "text": text.decode(),
        }
    finally:
        stop_process(process)
        log.close()
        traffic.close()


SHAPES = (
    [],
    ["--external-ips", "drop"],
    ["--aggregate", "workload"],
    ["--aggregate", "workload", "--external-ips", "drop"],
)


# -- many targets through one Prometheus -----------------------------------------------------------------------------


class Targets:
    """One listener on 0.0.0.0:TARGET_PORT answering every GET with one exposition, gzipped if asked for (as
    Prometheus always asks), in a process of its own so that Prometheus's CPU is measured alone."""

    SERVER = r"""
import asyncio, gzip, sys
body = open(sys.argv[1], 'rb').read()
packed = gzip.compress(body, 6)
def answer(gz):
    payload = packed if gz else body
    head = ('HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: %d\r\n' % len(payload))
    return (head + ('Content-Encoding: gzip\r\n' if gz else '') + '\r\n').encode() + payload
plain, zipped = answer(False), answer(True)
async def serve(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b'\r\n\r\n')
            writer.write(zipped if b'gzip' in head.lower() else plain)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()
async def main():
    server = await asyncio.start_server(serve, '0.0.0.0', int(sys.argv[2]), backlog=4096)
    print('ready', flush=True)
    await server.serve_forever()
asyncio.run(main())
"""

    def __init__(self, exposition: Path) -> None:
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", NETNS, sys.executable, "-c", self.SERVER, str(exposition), str(TARGET_PORT)],
            stdout=subprocess.PIPE,
        )
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != b"ready":
            raise SystemExit("the targets' server did not start")

    def stop(self) -> None:
        stop_process(self.process)


def target_address(index: int) -> str:
    return f"127.{1 + index // 62_500}.{index // 250 % 250}.{1 + index % 250}"


def own_metric(name: str) -> float:
    """One of Prometheus's own metrics, summed over its label sets, read from its /metrics (no self-scrape job to
    add series of its own)."""
    _, body = get("/metrics", port=PROMETHEUS_PORT)
    values = [
        float(line.split()[-1]) for line in body.decode().splitlines() if line.split("{")[0].split(" ")[0] == name
    ]
    return sum(values) if values else float("nan")


def query(expr: str) -> float:
    status, body = get("/api/v1/query?" + urllib.parse.urlencode({"query": expr}), port=PROMETHEUS_PORT)
    if status != 200:
        return float("nan")
    result = json.loads(body)["data"]["result"]
    return float(result[0]["value"][1]) if result else float("nan")


def prometheus_run(workdir: Path, targets: int, interval: int, seconds: int, limits: dict[str, int]) -> dict[str, Any]:
    """Prometheus scraping `targets` targets every `interval` s; measured over the last half of `seconds`."""
    addresses = sorted({f"{target_address(i)}:{TARGET_PORT}" for i in range(targets)})
    config = {
        "global": {"scrape_interval": f"{interval}s", "scrape_timeout": f"{min(interval, 10)}s"},
        "scrape_configs": [{"job_name": "khan", "static_configs": [{"targets": addresses}], **limits}],
    }
    data = workdir / f"prometheus-{time.monotonic_ns()}"
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = (workdir / "prometheus.log").open("ab")
    argv = [
        "prometheus", "--config.file", str(workdir / "prometheus.yml"), "--storage.tsdb.path", str(data),
        "--web.listen-address", f"127.0.0.1:{PROMETHEUS_PORT}", "--log.level", "warn",
    ]  # fmt: skip
    process = subprocess.Popen(["ip", "netns", "exec", NETNS, *argv], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while get("/-/ready", port=PROMETHEUS_PORT)[0] != 200:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"prometheus not ready: see {workdir / 'prometheus.log'}")
            time.sleep(0.2)
        time.sleep(seconds / 2)
        appended0, cpu0, t0 = (
            own_metric("prometheus_tsdb_head_samples_appended_total"),
            cpu_seconds(process.pid),
            time.time(),
        )
        time.sleep(seconds / 2)
        appended1, cpu1, t1 = (
            own_metric("prometheus_tsdb_head_samples_appended_total"),
            cpu_seconds(process.pid),
            time.time(),
        )
        return {
            "targets": targets,
            "interval_s": interval,
            "up": query('sum(up{job="khan"})'),
            "head_series": own_metric("prometheus_tsdb_head_series"),
            "samples_per_s": (appended1 - appended0) / (t1 - t0),
            "cpu_share": (cpu1 - cpu0) / (t1 - t0),
            "rss_mb": status_mib(process.pid),
            "scrape_s": query('avg(scrape_duration_seconds{job="khan"})'),
        }
    finally:
        stop_process(process)
        log.close()
        shutil.rmtree(data, ignore_errors=True)


def limits_for(shape: dict[str, Any]) -> dict[str, int]:
    """Scrape limits as tight as this exposition allows (job and instance are the only target labels here), to
    show they hold: a scrape over either limit fails whole and `up` says 0."""
    return {"sample_limit": shape["series"], "label_limit": shape["most_labels"] + 2, "label_value_length_limit": 253}


# -- the whole run ---------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--targets", type=int, nargs="*", default=[100, 1000])
    parser.add_argument("--interval", type=int, default=10, help="Prometheus's scrape interval for the simulation")
    parser.add_argument("--seconds", type=int, default=50, help="each Prometheus run (measured over its 2nd half)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("the benchmark needs root (it builds a network namespace)")
    with node_namespace(), tempfile.TemporaryDirectory(prefix="khan-fleet-", dir="/dev/shm") as name:
        workdir = Path(name)
        (workdir / "inventory.yaml").write_text(yaml.safe_dump(inventory(), sort_keys=False))
        traffic = Traffic()
        try:
            shapes = []
            for flags in SHAPES:
                began = time.monotonic()
                shapes.append(shape(workdir, traffic, flags))
                print(f"shape {flags}: {time.monotonic() - began:.1f} s", file=sys.stderr, flush=True)
        finally:
            traffic.shutdown()
            print(f"traffic stopped at {time.strftime('%X')}", file=sys.stderr, flush=True)
        RESULTS.mkdir(exist_ok=True)
        for number, row in enumerate(shapes):
            print(json.dumps({k: v for k, v in row.items() if k != "text"}), flush=True)
            (RESULTS / f"fleet-shape-{number}.prom").write_text(row["text"])
        runs = []
        for row in (shapes[0], shapes[-1]):  # the largest shape and the smallest
            exposition = workdir / "exposition.txt"
            exposition.write_text(row["text"])
            targets = Targets(exposition)
            try:
                for count in args.targets:
                    began = time.monotonic()
                    run = prometheus_run(workdir, count, args.interval, args.seconds, limits_for(row))
                    run["shape"] = row["flags"]
                    run["series_per_target"] = row["series"]
                    print(json.dumps(run), f"{time.monotonic() - began:.1f} s", flush=True)
                    runs.append(run)
            finally:
                targets.stop()
    print(f"torn down at {time.strftime('%X')}", file=sys.stderr, flush=True)
    text = report(shapes, runs)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "fleet.md").write_text(text + "\n")
    for row in shapes:
        row.pop("text")
    (RESULTS / "fleet.json").write_text(json.dumps({"shapes": shapes, "prometheus": runs}, indent=1) + "\n")


def report(shapes: list[dict[str, Any]], runs: list[dict[str, Any]]) -> str:
    lines = [
        f"one node: {PODS_PER_NODE} pods, {len(connections())} TCP connections and {PODS_PER_NODE} DNS exchanges"
        f" ({EXTERNAL_CLIENTS} outside clients, {EXTERNAL_APIS} outside APIs); the real agent, file inventory",
        "",
        "| agent flags | series (all) | connection families | khan_connection / opened / bytes / transactions |"
        " bytes per scrape | gzip | most labels on a sample |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in shapes:
        families = " / ".join(str(s["families"][name]) for name in CONNECTION_FAMILIES)
        lines.append(
            f"| {s['flags']} | {s['series']:,} | {s['connection_series']:,} | {families} | {s['bytes']:,} |"
            f" {s['gzip_bytes']:,} | {s['most_labels']} |"
        )
    lines += [
        "",
        "| exposition served | targets | up | head series | samples/s (interval) | Prometheus CPU | RSS |"
        " scrape duration |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in runs:
        lines.append(
            f"| {r['shape']} ({r['series_per_target']:,} series) | {r['targets']:,} | {r['up']:.0f} |"
            f" {r['head_series']:,.0f} | {r['samples_per_s']:,.0f} ({r['interval_s']} s) |"
            f" {100 * r['cpu_share']:.0f}% of a core | {r['rss_mb']:.0f} MB | {1000 * r['scrape_s']:.1f} ms |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
