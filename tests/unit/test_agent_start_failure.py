"""A start that fails after the web protection is set up (--events on, and the event subscription impossible)
closes what it opened: the --auth kubernetes review client and the inventory."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from khan.app import Agent, StartupError
from khan.inventory.source import FileInventory
from khan.settings import Settings

KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: not-a-real-token}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
"""


class RecordingInventory(FileInventory):
    closed = False

    async def close(self) -> None:
        self.closed = True
        await super().close()


def test_a_failed_start_closes_the_review_client_and_the_inventory(tmp_path: Path) -> None:
    (tmp_path / "kubeconfig").write_text(KUBECONFIG)
    (tmp_path / "inventory.json").write_text('{"apiVersion": "v1", "kind": "List", "items": []}\n')
    settings = Settings(
        inventory=str(tmp_path / "inventory.json"),
        kubeconfig=str(tmp_path / "kubeconfig"),
        auth="kubernetes",
        events="on",
        netns="khan-no-such-namespace",  # the event subscription cannot enter it
        node_name="node1",
    )
    inventory = RecordingInventory(settings.inventory)
    agent = Agent(settings, inventory)

    async def start() -> object:
        with pytest.raises(StartupError):
            await agent.start()
        return agent.protection.reviews

    reviews = asyncio.run(start())
    assert reviews is None  # Protection.close() releases the review client's session
    assert inventory.closed
