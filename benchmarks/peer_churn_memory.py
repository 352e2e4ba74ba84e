"""The agent's memory under the worst churn of outside peers: a node whose table sees N new outside addresses per
poll (an internet-facing ingress, a scan), far more than --max-series and all within --counter-ttl.

A private namespace makes every address of 10.0.0.0/8 local, so one UDP socket can `sendto` 100,000 distinct
peers in about a second, each its own conntrack entry and its own label set. The real `khan agent` (empty
inventory: every peer is `external`, its IP kept, the default) polls the namespace's table; after each poll this
reads the agent's VmRSS and VmHWM (peak) from /proc, and its own self-metrics. Unreplied UDP entries live
`--udp-timeout` seconds (60: three rounds), so the table stays full (nf_conntrack_max) of distinct peers, each
poll finding 100,000 of them new: the worst case for the tracker and for a poll's own working memory.

At the end it compares the sums of khan_connections_opened_total and khan_flow_bytes_total over every series
(overflow included) with what was sent: bounds fold, they never drop. On a full table the kernel itself evicts
entries (early_drop) and drops events, so a few may go uncounted there; khan's loss metrics (printed) say how
were lost. tests/e2e/test_memory_bounds.py checks exact totals on a table that is never full.

Run as root: `python benchmarks/peer_churn_memory.py [--peers 100000] [--polls 15] [--interval 5]`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the traffic helper is the tests' own

from khan.conntrack.namespace import entered  # noqa: E402
from khan.demo.namespaces import private_prefix  # noqa: E402
from tests.support.outside_peers import PEER_PORT, SOURCE, send_to_peers  # noqa: E402
from tests.support.table_fill import table_namespace  # noqa: E402

UDP_IP_HEADERS = 28  # IPv4 and UDP headers around each one-byte datagram
PORT = 9986
Metrics = dict[str, dict[tuple[tuple[str, str], ...], float]]  # family sample name -> labels -> value
ISSUE_FIGURES = "225 -> 296 -> 340 -> 417 -> 459 -> 512 MiB"  # issue 12, before the bounds, 100,000 peers a poll


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def tree_pss_mib(pid: int) -> float:
    """The agent's memory with its rendering child's, as the container's limit counts it: the sum of their
    proportional set sizes (pages a child shares copy-on-write with the agent count once in all)."""
    total_kib = 0
    for member in (pid, *_children(pid)):
        with contextlib.suppress(OSError):  # a child may be gone between the listing and the reading
            for line in Path(f"/proc/{member}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total_kib += int(line.split()[1])
    return total_kib / 1024


def _children(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


class PeakSampler:
    """Samples tree_pss_mib every 50 ms in a thread; `take()` returns the peak since the previous take."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self._peak = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            sample = tree_pss_mib(self._pid)
            with self._lock:
                self._peak = max(self._peak, sample)

    def take(self) -> float:
        with self._lock:
            peak, self._peak = self._peak, 0.0
        return peak

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def scrape(netns: str) -> Metrics:
    with entered(netns), urllib.request.urlopen(f"http://127.0.0.1:{PORT}/metrics", timeout=30) as answer:
        text = answer.read().decode()
    found: Metrics = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def one(metrics: Metrics, name: str, **labels: str) -> float:
    return sum(
        value for key, value in metrics.get(name, {}).items() if all(dict(key).get(k) == v for k, v in labels.items())
    )


def peers_total(metrics: Metrics, name: str, **labels: str) -> float:
    """A counter family's sum over the series of the churn (UDP from SOURCE or folded), overflow included."""
    wanted = {"transport": "udp", **labels}
    found = 0.0
    for key, value in metrics.get(name, {}).items():
        as_dict = dict(key)
        ours = as_dict.get("src_ip") in (SOURCE, "") and as_dict.get("dst_port") in (str(PEER_PORT), "")
        if ours and all(as_dict.get(k) == v for k, v in wanted.items()):
            found += value
    return found


def polls_done(log: Path) -> int:
    return log.read_text().count('"event": "poll_done"')


def wait_for_poll_after(log: Path, done_before: int, timeout: float) -> None:
    """Until a poll that began after `done_before` polls had finished has finished too. Read from the agent's log,
    so that the benchmark scrapes no more often than Prometheus would (a scrape has its own cost)."""
    deadline = time.monotonic() + timeout
    while polls_done(log) < done_before + 2:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no complete poll within {timeout} s")
        time.sleep(0.2)


@contextlib.contextmanager
def agent(netns: str, workdir: Path, args: argparse.Namespace) -> Iterator[subprocess.Popen[Any]]:
    inventory = workdir / "inventory.yaml"
    inventory.write_text("apiVersion: v1\nkind: List\nitems: []\n")
    argv = [sys.executable, "-m", "khan", "agent", "--inventory", str(inventory), "--node-name", "node1"]
    argv += ["--listen", f"127.0.0.1:{PORT}", "--interval", str(args.interval), "--log-format", "json"]
    argv += ["--log-level", "debug"]  # one poll_done line per poll
    argv += ["--max-series", str(args.max_series)]
    with (workdir / "agent.log").open("wb") as log:
        process = subprocess.Popen(["ip", "netns", "exec", netns, *argv], stdout=log, stderr=log)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=100_000, help="new outside peers per poll")
    parser.add_argument("--polls", type=int, default=15, help="rounds of new peers (each followed by a poll)")
    parser.add_argument("--interval", type=float, default=5.0, help="the agent's --interval")
    parser.add_argument("--max-series", type=int, default=10_000, help="the agent's --max-series")
    parser.add_argument(
        "--udp-timeout", type=int, default=60, help="seconds an unreplied UDP entry stays: 60 keeps the table full"
    )
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args(sys.argv[1:])
    if os.geteuid() != 0:
        sys.exit("peer_churn_memory: run as root (network namespaces)")
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # clean up the namespace too
    netns = private_prefix("khanmem") + "t"
    with tempfile.TemporaryDirectory(prefix="khan-mem-") as tmp, table_namespace(netns):
        subprocess.run(["ip", "-n", netns, "route", "add", "local", "10.0.0.0/8", "dev", "lo"], check=True)
        for key, value in (("nf_conntrack_acct", "1"), ("nf_conntrack_udp_timeout", str(args.udp_timeout))):
            subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-qw", f"net.netfilter.{key}={value}"], check=True)
        log = Path(tmp) / "agent.log"
        with agent(netns, Path(tmp), args) as process:
            wait_for_poll_after(log, 0, 30)
            print(f"# {args.peers:,} new peers a poll, --interval {args.interval:g}, --max-series {args.max_series:,}")
            print(
                "| round | peers so far | poll s | table entries | tracked | label sets | VmRSS MiB | VmHWM MiB"
                " | agent + child peak MiB |"
            )
            print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
            rss: list[float] = []
            tree_peaks: list[float] = []
            sampler = PeakSampler(process.pid)
            metrics: Metrics = {}
            for round_ in range(args.polls):
                send_to_peers(netns, round_ * args.peers, args.peers)
                wait_for_poll_after(log, polls_done(log), 4 * args.interval + 60)
                metrics = scrape(netns)
                rss.append(status_kib(process.pid, "VmRSS") / 1024)
                label_sets = one(metrics, "khan_series_label_sets")
                tree_peaks.append(sampler.take())
                print(
                    f"| {round_ + 1} | {(round_ + 1) * args.peers:,} | {one(metrics, 'khan_poll_duration_seconds'):.1f}"
                    f" | {one(metrics, 'khan_conntrack_table_entries'):,.0f}"
                    f" | {one(metrics, 'khan_tracked_entries'):,.0f} | {label_sets:,.0f}"
                    f" | {rss[-1]:.0f} | {status_kib(process.pid, 'VmHWM') / 1024:.0f} | {tree_peaks[-1]:.0f} |",
                    flush=True,
                )
            sent = args.polls * args.peers
            opened = peers_total(metrics, "khan_connections_opened_total")
            sent_bytes = peers_total(metrics, "khan_flow_bytes_total", direction="sent")
            sent_bytes_expected = sent * (UDP_IP_HEADERS + 1)
            print(
                f"\nopened counted {opened:,.0f} of {sent:,}; bytes sent {sent_bytes:,.0f} of {sent_bytes_expected:,}"
            )
            lost = (
                f"events dropped {one(metrics, 'khan_events_dropped_total'):,.0f}, connections possibly missed"
                f" {one(metrics, 'khan_connections_possibly_missed_total'):,.0f}, entries vanished"
                f" {one(metrics, 'khan_tracked_entries_vanished_total'):,.0f}"
            )
            print(lost)
            print(f"issue 12's figures before the bounds: {ISSUE_FIGURES}")
            third = len(rss) // 3  # the first third fills the table; then only the churn goes on
            if third:
                middle, last = max(rss[third : 2 * third]), max(rss[2 * third :])
                print(f"highest VmRSS, middle third of the rounds {middle:.0f} MiB, last third {last:.0f} MiB")
            sampler.stop()
            print(f"peak (VmHWM) {status_kib(process.pid, 'VmHWM') / 1024:.0f} MiB")
            print(f"peak of the agent and its rendering child together (PSS, every 50 ms) {max(tree_peaks):.0f} MiB")


if __name__ == "__main__":
    main()
