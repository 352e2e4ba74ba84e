"""`make bench`: serving at 10,000 connection series. How fast /healthz answers while scrapers hammer /metrics,
and what a scrape costs with and without gzip.

A private namespace's table gets 10,000 distinct UDP flows (10 sources x 125 destinations x 8 ports, all local
to the namespace) after `khan agent` has started on it (--enable-accounting, in that namespace only), so that
the connection gauge, the opened-connections counters and the byte counters all carry ~10,000 series. The
agent reads it from the host's namespace and serves on loopback with --interval 5, so renderings happen during
the measurement. Reported:
- the rendering after each poll (both formats and their gzip, in the agent's rendering thread): median seconds;
- one scraper at a time: the scrape's wall time (median of --scrapes) and its bytes, plain, gzip, OpenMetrics;
- 8 concurrent scrapers (processes of their own) for --seconds, plain and then gzip, while a probe opens a new
  connection to /healthz every 50 ms as the kubelet would: the probe's median, p99 and max; the scrapes' median.

    .venv/bin/python benchmarks/serving.py [--seconds 20] [--scrapers 8] [--scrapes 20]

Run as root. The namespace is removed on exit.
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the load helpers are the tests' own

from khan.demo.namespaces import private_prefix  # noqa: E402
from tests.support.serving_load import (  # noqa: E402
    SERIES,
    agent,
    fill_distinct_series,
    percentile,
    scrapers,
    time_probes,
    wait_for_series,
)
from tests.support.table_fill import table_namespace  # noqa: E402

OPENMETRICS_ACCEPT = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"


def one_scrape(port: int, headers: dict[str, str]) -> tuple[float, int, bytes]:
    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", "/metrics", headers=headers)
        response = connection.getresponse()
        body = response.read()
        assert response.status == 200, response.status
    finally:
        connection.close()
    return time.perf_counter() - started, len(body), body


def sequential(port: int, count: int) -> None:
    print(f"one scraper at a time, median of {count}:")
    for name, headers in (
        ("plain", {}),
        ("gzip", {"Accept-Encoding": "gzip"}),
        ("OpenMetrics", {"Accept": OPENMETRICS_ACCEPT}),
        ("OpenMetrics gzip", {"Accept": OPENMETRICS_ACCEPT, "Accept-Encoding": "gzip"}),
    ):
        runs = [one_scrape(port, headers) for _ in range(count)]
        size = runs[-1][1]
        series = gzip.decompress(runs[-1][2]) if "gzip" in name else runs[-1][2]
        lines = sum(1 for line in series.splitlines() if line.startswith(b"khan_connection{"))
        median_ms = statistics.median(r[0] for r in runs) * 1000
        print(f"  {name:<17} {median_ms:7.1f} ms  {size:>10,} bytes  ({lines:,} khan_connection series)")


def concurrent(port: int, count: int, seconds: float, encoding: str) -> None:
    with scrapers(port, count, seconds, encoding) as scrapes:
        time.sleep(1)  # every scraper going
        probes = time_probes(port, seconds - 2)
    ok = [scrape for scrape in scrapes if scrape.status == 200]
    label = encoding or "plain"
    print(f"{count} concurrent scrapers, {label}, {seconds:g} s: {len(ok)} scrapes ({len(scrapes) - len(ok)} failed)")
    print(
        f"  /healthz probe ({len(probes)}): median {statistics.median(probes) * 1000:.1f} ms, "
        f"p99 {percentile(probes, 0.99) * 1000:.1f} ms, max {max(probes) * 1000:.1f} ms"
    )
    if ok:
        times = [scrape.seconds for scrape in ok]
        print(
            f"  scrape: median {statistics.median(times) * 1000:.1f} ms, p99 {percentile(times, 0.99) * 1000:.1f} ms, "
            f"{ok[-1].size:,} bytes"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--scrapers", type=int, default=8)
    parser.add_argument("--scrapes", type=int, default=20)
    args = parser.parse_args()
    os.chdir(ROOT)  # `python -m khan` in the agent's command line is this checkout's khan
    with (
        tempfile.TemporaryDirectory(prefix="khan-serving-") as workdir,
        table_namespace(private_prefix("khanbsrv")) as netns,
        agent(netns, Path(workdir), ["--enable-accounting", "--interval", "5", "--log-level", "debug"]) as running,
    ):
        fill_distinct_series(netns)
        wait_for_series(running, SERIES)
        time.sleep(6)  # a poll that also saw every flow's counters
        sequential(running.port, args.scrapes)
        concurrent(running.port, args.scrapers, args.seconds, "")
        concurrent(running.port, args.scrapers, args.seconds, "gzip")
        renders = [json.loads(line) for line in running.lines() if '"exposition_rendered"' in line]
        full = [render["seconds"] for render in renders if render["text_bytes"] > 1_000_000]
        if full:
            print(
                f"rendering after a poll (both formats, gzipped): median {statistics.median(full):.2f} s of {len(full)}"
            )


if __name__ == "__main__":
    main()
