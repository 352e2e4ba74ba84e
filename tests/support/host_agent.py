"""`khan agent` in the host's namespace reading a lab node's table through --netns, serving on the host's
loopback: scraping it adds nothing to the table under test. Stopped at the end, whatever happens."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from khan.demo.lab import Lab
from tests.e2e.test_agent_http import free_port, get, wait_ready
from tests.support.exposition import KHAN, samples
from tests.support.kube_cluster import stop_process


def total(text: str, name: str, **wanted: str) -> float:
    """The sum of a family's samples whose labels include `wanted`."""
    return sum(
        value
        for labels, value in samples(text, name).items()
        if all(dict(labels).get(key) == expected for key, expected in wanted.items())
    )


class HostAgent:
    def __init__(self, lab: Lab, inventory: Path, log: Path, interval: str, extra: Sequence[str] = ()) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = log
        argv = [*KHAN, "agent", "--inventory", str(inventory), "--node-name", "node1", "--netns", lab.netns("node1")]
        argv += ["--listen", f"127.0.0.1:{self.port}", "--interval", interval, "--log-format", "json", *extra]
        with log.open("wb") as out:
            self.process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_ready(self.base, self.process)
        except AssertionError as exc:
            self.stop()
            raise AssertionError(f"{exc}\n{self.tail()}") from None

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def metrics(self) -> str:
        assert self.process.poll() is None, self.tail()
        status, text = get(self.base + "/metrics")
        assert status == 200, text
        return text

    def poll_after(self, moment: float, seconds: float = 10) -> str:
        """The first exposition of a poll that started after `moment` (unix time)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            text = self.metrics()
            finished = total(text, "khan_last_successful_poll_timestamp_seconds")
            if finished - total(text, "khan_poll_duration_seconds") > moment:
                return text
            time.sleep(0.05)
        raise AssertionError(f"no poll started after {moment} within {seconds} s\n{self.tail()}")

    def pause(self) -> None:
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # a paused process would not act on SIGTERM
        stop_process(self.process)


@contextlib.contextmanager
def host_agent(lab: Lab, inventory: Path, log: Path, interval: str, extra: Sequence[str] = ()) -> Iterator[HostAgent]:
    agent = HostAgent(lab, inventory, log, interval, extra)
    try:
        yield agent
    finally:
        agent.stop()
