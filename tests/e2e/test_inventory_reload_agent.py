"""The real `khan agent` and `khan snapshot` with inventory files that go wrong: a broken file at start is one
line and exit 1; a broken edit while running keeps the old attribution with one warning, and the fixed file is
then picked up; an over-long name is served cut to the label value cap."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from khan.attribution.labels import MAX_LABEL_VALUE_BYTES, capped
from khan.demo.lab import Lab
from tests.e2e.test_agent_http import free_port, get, wait_ready
from tests.support.exposition import KHAN, connections, khan, lab_with_traffic, samples

POD_A = ("pod", "10.244.1.10", "shop", "web", "pod-a")
SERVICE = ("service", "10.96.0.10", "shop", "web-svc", "web-svc")
TO_SERVICE = ("80", "tcp", "ESTABLISHED")
# A document whose integer Python refuses to build (more than 4,300 digits): a ValueError inside the parser.
UNBUILDABLE = "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: odd}\ndata: {size: " + "9" * 5000 + "}\n"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, Path]]:
    with lab_with_traffic("khanreload", tmp_path_factory.mktemp("reload")) as built:
        yield built


def renamed(inventory: Path, old: str, new: str) -> str:
    """The lab's inventory with one pod renamed."""
    document: dict[str, Any] = yaml.safe_load(inventory.read_text())
    for item in document["items"]:
        if item["kind"] == "Pod" and item["metadata"]["name"] == old:
            item["metadata"]["name"] = new
    return yaml.safe_dump(document, sort_keys=False)


def replace(path: Path, text: str) -> None:
    new = path.with_suffix(".new")
    new.write_text(text)
    os.replace(new, path)


def events(log: Path, name: str) -> list[dict[str, Any]]:
    found = []
    for line in log.read_text().splitlines():
        record = json.loads(line)  # every line is JSON: no traceback anywhere
        if record["event"] == name:
            found.append(record)
    return found


def series_to_service(base: str) -> dict[tuple[str, ...], int]:
    status, text = get(base + "/metrics")
    assert status == 200
    return {
        series[:5]: count
        for series, count in connections(text, "node1").items()
        if series[5:] == (*SERVICE, *TO_SERVICE)
    }


def until(condition: Any, what: str, log: Path, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"not within {seconds} s: {what}\n{log.read_text()[-3000:]}"
        time.sleep(0.1)


def test_a_broken_file_at_start_is_one_line_and_exit_1(lab: tuple[Lab, Path], tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(lab[1].read_text() + UNBUILDABLE)
    done = khan(
        ["agent", "--inventory", str(broken), "--netns", lab[0].netns("node1"), "--listen", f"127.0.0.1:{free_port()}"]
    )
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert line.startswith(
        f"khan: inventory file {broken}: cannot load it: ValueError: Exceeds the limit (4300 digits)"
    )


def test_a_broken_edit_keeps_the_old_attribution_until_a_fixed_file(lab: tuple[Lab, Path], tmp_path: Path) -> None:
    the_lab, lab_inventory = lab
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(lab_inventory.read_text())
    log = tmp_path / "agent.log"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    argv = [*KHAN, "agent", "--inventory", str(inventory), "--node-name", "node1", "--netns", the_lab.netns("node1")]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*argv, "--listen", f"127.0.0.1:{port}", "--interval", "0.5", "--log-format", "json"],
            stdout=out,
            stderr=out,
        )
    try:
        wait_ready(base, proc)
        assert POD_A in series_to_service(base)

        replace(inventory, lab_inventory.read_text() + UNBUILDABLE)
        until(lambda: events(log, "inventory_reload_failed"), "the warning", log)
        time.sleep(2.5)  # more checks of the same broken file, and several polls
        assert proc.poll() is None, log.read_text()
        (warning,) = events(log, "inventory_reload_failed")
        assert warning["level"] == "warning"
        assert warning["error"].startswith(f"inventory file {inventory}: cannot load it: ValueError")
        assert warning["kept_addresses"] > 0
        assert POD_A in series_to_service(base)  # still named as before the edit

        replace(inventory, renamed(lab_inventory, "pod-a", "pod-a-v2"))
        renamed_pod = (*POD_A[:4], "pod-a-v2")
        until(lambda: renamed_pod in series_to_service(base), "the fixed file's names", log)
        assert len(events(log, "inventory_reloaded")) == 1
        assert get(base + "/readyz") == (200, "ready\n")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_an_over_long_name_is_served_cut_to_the_cap(lab: tuple[Lab, Path], tmp_path: Path) -> None:
    the_lab, lab_inventory = lab
    long_name = "pod-a-" + "x" * 400
    inventory = tmp_path / "long-names.yaml"
    inventory.write_text(renamed(lab_inventory, "pod-a", long_name))
    done = khan(["snapshot", "--inventory", str(inventory), "--node-name", "node1", "--netns", the_lab.netns("node1")])
    assert done.returncode == 0, done.stderr
    served = capped(long_name)
    assert len(served.encode()) == MAX_LABEL_VALUE_BYTES
    assert (*POD_A[:4], served) in {series[:5] for series in connections(done.stdout, "node1")}
    longest = max(len(value.encode()) for labels in samples(done.stdout, "khan_connection") for _, value in labels)
    assert longest == MAX_LABEL_VALUE_BYTES
