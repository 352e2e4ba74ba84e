"""SIGTERM ends the real `khan agent` within 5 s even when a worker thread is stuck for good: here the inventory
reload, blocked reading a FIFO whose writer never writes (no Python code can interrupt that read)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from khan.demo.namespaces import private_prefix
from tests.e2e.test_agent_http import free_port, get, wait_ready
from tests.support.exposition import KHAN, value

WEB = "apiVersion: v1\nkind: Pod\nmetadata: {name: web-1, namespace: shop}\nstatus: {podIP: 10.244.1.10}\n"


@pytest.fixture
def netns() -> Iterator[str]:
    """An empty network namespace of this test's own: the agent polls its (empty) table."""
    name = f"{private_prefix('khanstop')}-n"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def writer_once_read(fifo: Path, seconds: float = 5.0) -> int:
    """A write end of `fifo`, opened as soon as a reader has it open (before, the open fails with ENXIO). The
    reader's open() then returns and its read() waits for data that never comes, for as long as this stays open."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def test_sigterm_ends_the_agent_within_5_s_with_a_thread_stuck_reading_a_fifo(tmp_path: Path, netns: str) -> None:
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(WEB)
    log = tmp_path / "agent.log"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    argv = [*KHAN, "agent", "--inventory", str(inventory), "--netns", netns, "--listen", f"127.0.0.1:{port}"]
    with log.open("wb") as out:
        proc = subprocess.Popen([*argv, "--interval", "0.5", "--log-format", "json"], stdout=out, stderr=out)
    writer: int | None = None
    try:
        wait_ready(base, proc)
        fifo = tmp_path / "fifo"
        os.mkfifo(fifo)
        os.replace(fifo, inventory)  # the next check (within 1 s) opens it in a worker thread
        writer = writer_once_read(inventory)
        # Stuck for good, yet the agent serves and polls on.
        polls = value(get(base + "/metrics")[1], "khan_polls_total")
        time.sleep(1.2)
        assert get(base + "/healthz") == (200, "ok\n")
        assert value(get(base + "/metrics")[1], "khan_polls_total") >= polls + 2

        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(timeout=15)
        elapsed = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if writer is not None:
            os.close(writer)
    text = log.read_text()
    assert elapsed < 5, text
    assert status == 1, text  # stopped, but not cleanly
    lines = [json.loads(line) for line in text.splitlines()]  # every line is JSON: no traceback
    abandoned = [line for line in lines if line["event"] == "shutdown_abandoned"]
    assert len(abandoned) == 1, text
    (thread,) = abandoned[0]["threads"]
    assert " in khan/inventory/from_file.py:" in thread
    assert thread.endswith(" load_inventory")
    assert [line["event"] for line in lines].count("agent_stopped") == 1  # the rest of the shutdown ran
