"""FileInventory: an edited file is picked up in a worker thread; a broken edit, whatever breaks it, keeps the
previous inventory with one warning."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from pathlib import Path

import pytest
import structlog

from khan.inventory.index import EXTERNAL, Owner
from khan.inventory.source import FileInventory

WEB = "apiVersion: v1\nkind: Pod\nmetadata: {name: web-1, namespace: shop}\nstatus: {podIP: 10.244.1.10}\n"
API = WEB.replace("web-1", "api-1")
HUGE_NUMBER = WEB + "spec: {priority: " + "9" * 5000 + "}\n"
CHECK_SECONDS = 0.05


def owner_at(inventory: FileInventory, address: str) -> Owner:
    return inventory.current().owner(socket.inet_aton(address))


def replace(path: Path, text: str) -> None:
    """As `kubectl get ... > tmp && mv tmp FILE` does: a new file under the old name."""
    new = path.with_suffix(".new")
    new.write_text(text)
    os.replace(new, path)


async def until(condition: object, what: str, seconds: float = 5.0) -> None:
    async with asyncio.timeout(seconds):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.01)


def test_broken_edits_keep_the_last_good_inventory_and_warn_once(tmp_path: Path) -> None:
    path = tmp_path / "inventory.yaml"
    path.write_text(WEB)
    inventory = FileInventory(str(path), check_seconds=CHECK_SECONDS)

    async def scenario() -> list[dict[str, object]]:
        with structlog.testing.capture_logs() as logs:
            await inventory.start()
            stop = asyncio.Event()
            running = asyncio.create_task(inventory.run(stop))
            assert owner_at(inventory, "10.244.1.10") == Owner("pod", "shop", "", "web-1")

            replace(path, HUGE_NUMBER)
            await until(lambda: any(log["event"] == "inventory_reload_failed" for log in logs), "the warning")
            await asyncio.sleep(20 * CHECK_SECONDS)  # many checks of the same broken file
            assert owner_at(inventory, "10.244.1.10") == Owner("pod", "shop", "", "web-1")

            replace(path, API)
            await until(lambda: owner_at(inventory, "10.244.1.10").name == "api-1", "the fixed file")

            path.unlink()  # gone: also kept
            await until(lambda: sum(log["event"] == "inventory_reload_failed" for log in logs) == 2, "gone")
            assert owner_at(inventory, "10.244.1.10").name == "api-1"
            stop.set()
            await asyncio.wait_for(running, timeout=1)
        return logs

    logs = asyncio.run(scenario())
    failures = [log for log in logs if log["event"] == "inventory_reload_failed"]
    assert len(failures) == 2  # one per broken state, not one per check
    first = failures[0]
    assert str(first["error"]).startswith(f"inventory file {path}: cannot load it: ValueError: Exceeds the limit")
    assert first["kept_addresses"] == 1
    assert first["log_level"] == "warning"
    json.dumps(first)  # serialisable: one JSON line
    assert [log["event"] for log in logs].count("inventory_reloaded") == 1


def test_a_file_rewritten_broken_every_second_is_not_a_log_storm(tmp_path: Path) -> None:
    path = tmp_path / "inventory.yaml"
    path.write_text(WEB)
    inventory = FileInventory(str(path), check_seconds=CHECK_SECONDS)
    inventory.load()
    with structlog.testing.capture_logs() as logs:
        for number in range(5):
            replace(path, HUGE_NUMBER + f"# edit {number}\n")
            inventory.reload_if_changed()
    assert [log["event"] for log in logs] == ["inventory_reload_failed"]  # the other four are held back
    assert owner_at(inventory, "10.244.1.10") == Owner("pod", "shop", "", "web-1")
    assert owner_at(inventory, "10.244.9.9") == EXTERNAL


def test_a_broken_file_at_start_is_an_error_for_the_caller(tmp_path: Path) -> None:
    from khan.inventory.from_file import InventoryError

    path = tmp_path / "inventory.yaml"
    path.write_text(HUGE_NUMBER)
    with pytest.raises(InventoryError, match="cannot load it: ValueError"):
        asyncio.run(FileInventory(str(path)).start())


def test_a_reload_stuck_reading_a_fifo_is_said_once_and_does_not_hold_up_stopping(tmp_path: Path) -> None:
    path = tmp_path / "inventory.yaml"
    path.write_text(WEB)
    inventory = FileInventory(str(path), check_seconds=CHECK_SECONDS, slow_seconds=0.2)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    async def scenario() -> list[dict[str, object]]:
        with structlog.testing.capture_logs() as logs:
            await inventory.start()
            stop = asyncio.Event()
            running = asyncio.create_task(inventory.run(stop))
            os.replace(fifo, path)  # the next check blocks in open(): no writer
            await until(lambda: any(log["event"] == "inventory_reload_stuck" for log in logs), "the warning")
            assert owner_at(inventory, "10.244.1.10").name == "web-1"  # what was loaded is still served
            stop.set()
            await asyncio.wait_for(running, timeout=0.5)  # it does not wait for the stuck thread
            # Let the thread go (a writer that closes at once: end of file), or asyncio.run would wait for it.
            os.close(os.open(path, os.O_WRONLY))
        return logs

    logs = asyncio.run(scenario())
    assert [log["event"] for log in logs].count("inventory_reload_stuck") == 1
