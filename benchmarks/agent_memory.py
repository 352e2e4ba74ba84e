"""The agent's whole memory with a full conntrack table tracked: with a small file inventory, and (`--api`) with
the 50,000-pod / 5,000-service / 1,000-node API inventory of `inventory_scale.py`, the two RSS targets of issue 15.

A private namespace's table is filled with 262,144 UDP flows (as `snapshot_vs_conntrack.py` does); the agent
runs in it with its defaults (counters and events on), polls every INTERVAL seconds, and its VmRSS (between two
polls) and VmHWM are read after POLLS polls. `--trees NAME=PATH[,VAR=VALUE...] ...` runs the agents of several
khan trees alternately (PYTHONPATH=PATH, plus those environment variables) for before/after figures from one run.
Reports medians of RUNS agents per tree. Run as root.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.support and benchmarks

from benchmarks import inventory_scale as scale
from benchmarks.proc_stats import status_mib
from khan.conntrack.namespace import entered
from tests.support.kube_cluster import KHAN_USER
from tests.support.table_fill import FILL_DESTINATIONS, FILL_SOURCES, fill_udp_flows, table_namespace

FLOWS = 262_144
RUNS = 3
POLLS = 3
INTERVAL = "8"  # seconds: a dump of the full table takes 1 to 3, and RSS is read between two polls
SETTLE = 1.5  # seconds after a poll is counted: its rendering is done, the next dump not begun
NETNS = f"khanmem{os.getpid()}"
PORT = 9987
HERE = Path(__file__).resolve().parent.parent
Tree = tuple[Path, dict[str, str]]  # a khan source tree, and environment variables for its agents


def parse_tree(spec: str) -> tuple[str, Tree]:
    name, _, rest = spec.partition("=")
    path, *variables = rest.split(",")
    return name, (Path(path), dict(variable.split("=", 1) for variable in variables))


def file_inventory(path: Path) -> Path:
    """One node, the fill's clients as pods and its destinations as services."""
    items: list[dict[str, object]] = [
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "bench"}, "status": {"addresses": []}}
    ]
    for i, ip in enumerate(FILL_SOURCES):
        items.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": f"client-{i}", "namespace": "bench", "labels": {"app": "client"}},
                "spec": {"nodeName": "bench"},
                "status": {"phase": "Running", "podIP": ip},
            }
        )
    for i, ip in enumerate(FILL_DESTINATIONS):
        items.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": f"svc-{i}", "namespace": "bench"},
                "spec": {"clusterIP": ip},
            }
        )
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    return path


def get(path: str) -> tuple[int, str]:
    return scale.get(path, NETNS, PORT)


def metric(text: str, name: str) -> float:
    """The first sample of the family, or 0 while it is not served yet (inventory_scale's exits instead)."""
    for line in text.splitlines():
        if line.startswith((name + " ", name + "{")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def agent(tree: Tree, source: list[str]) -> tuple[float, float, float, float]:
    """(RSS once ready, RSS after POLLS polls, VmHWM then, tracked entries) of one agent of `tree`."""
    path, extra = tree
    argv = [sys.executable, "-m", "khan", "agent", *source, "--node-name", "bench", "--interval", INTERVAL]
    argv += ["--listen", f"127.0.0.1:{PORT}", "--log-level", "warning"]
    env = {**os.environ, **extra, "PYTHONPATH": str(path)}
    process = subprocess.Popen(["ip", "netns", "exec", NETNS, *argv], stdout=subprocess.DEVNULL, env=env, cwd=path)
    try:
        deadline = time.monotonic() + 180
        ready_rss = None
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise SystemExit(f"agent exited with {process.returncode}")
            if ready_rss is None and get("/readyz")[0] == 200:
                ready_rss = status_mib(process.pid, "VmRSS")
            if ready_rss is not None:
                text = get("/metrics")[1]
                if metric(text, "khan_polls_total") >= POLLS:
                    time.sleep(SETTLE)
                    rss, hwm = status_mib(process.pid, "VmRSS"), status_mib(process.pid, "VmHWM")
                    return ready_rss, rss, hwm, metric(text, "khan_tracked_entries")
            time.sleep(0.2)
        raise SystemExit("agent did not poll in time")
    finally:
        process.terminate()
        process.wait(timeout=30)


def measure(trees: dict[str, Tree], source: list[str]) -> dict[str, list[tuple[float, float, float, float]]]:
    rows: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in trees}
    for run in range(RUNS):
        order = list(trees.items()) if run % 2 == 0 else list(reversed(trees.items()))
        for name, tree in order:
            rows[name].append(agent(tree, source))
            print(name, rows[name][-1], flush=True)
    return rows


def report(title: str, rows: dict[str, list[tuple[float, float, float, float]]]) -> None:
    print(f"\n{title}: medians of {RUNS} agents each, {POLLS} polls every {INTERVAL} s")
    print("| tree | RSS once ready | RSS after the polls | VmHWM | tracked entries |")
    print("| --- | --- | --- | --- | --- |")
    for name, runs in rows.items():
        med = [statistics.median(run[i] for run in runs) for i in range(4)]
        print(f"| {name} | {med[0]:.0f} MiB | {med[1]:.0f} MiB | {med[2]:.0f} MiB | {med[3]:,.0f} |")


def main() -> None:
    global POLLS, INTERVAL  # the script's knobs, read by agent()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trees", nargs="*", default=[f"this={HERE}"], help="NAME=PATH[,VAR=VALUE...]")
    parser.add_argument("--api", action="store_true", help="also the 50,000-pod API inventory (needs the apiserver)")
    parser.add_argument("--no-file", action="store_true", help="skip the file-inventory case")
    parser.add_argument("--polls", type=int, default=POLLS, help="polls before RSS is read")
    parser.add_argument("--interval", default=INTERVAL, help="the agents' --interval")
    args = parser.parse_args()
    POLLS, INTERVAL = args.polls, args.interval
    trees = dict(parse_tree(spec) for spec in args.trees)
    if os.geteuid() != 0:
        raise SystemExit("the benchmark needs root (it builds a network namespace)")
    with table_namespace(NETNS), tempfile.TemporaryDirectory(prefix="khan-mem-", dir="/dev/shm") as workdir:
        if args.api:  # first on an empty table (the inventory alone), then on the full one
            with scale.khan_cluster(NETNS, Path(workdir)) as cluster:
                kubeconfig = cluster.kubeconfig(KHAN_USER, Path(workdir) / "kubeconfig")
                with entered(NETNS):
                    asyncio.run(scale.populate(cluster))
                source = ["--kubeconfig", str(kubeconfig)]
                report("50,000-pod API inventory, empty table", measure(trees, source))
                fill_udp_flows(NETNS, FLOWS)
                report("50,000-pod API inventory, full table", measure(trees, source))
        if not args.no_file:
            if not args.api:
                fill_udp_flows(NETNS, FLOWS)
            inventory = file_inventory(Path(workdir) / "inventory.json")
            report("file inventory, full table", measure(trees, ["--inventory", str(inventory)]))


if __name__ == "__main__":
    main()
