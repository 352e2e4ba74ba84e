"""The agent image: the configuration deploy/Dockerfile's final stage gives it, the same read from the offline
build's Containerfile or from `podman image inspect`, and the offline build itself (deploy/image/build.sh) with
its private podman store."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support import tools
from tests.support.paths import REPO

DOCKERFILE = REPO / "deploy" / "Dockerfile"
BUILD_SCRIPT = REPO / "deploy" / "image" / "build.sh"
# The commands the offline build and the test's run need, and the Debian package of each (`make test` installs them).
IMAGE_TOOLS = {"mmdebstrap": "mmdebstrap", "podman": "podman", "runc": "runc"}
BUILDER_LABELS = ("io.buildah.version",)  # what podman adds to every image it builds


@dataclass(frozen=True)
class ImageConfig:
    """What an image runs and how: the parts of an OCI image configuration a Dockerfile's stage sets."""

    user: str = ""
    workdir: str = ""
    env: dict[str, str] = field(default_factory=dict)
    exposed: frozenset[str] = frozenset()  # "9986/tcp"
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, comments dropped and continuation lines joined."""
    found: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        if raw.lstrip().startswith("#"):
            continue
        line = f"{pending} {raw.strip()}" if pending else raw.strip()
        if line.endswith("\\"):
            pending = line[:-1].strip()
            continue
        pending = ""
        if line:
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def final_stage(text: str) -> list[tuple[str, str]]:
    """The instructions after the last FROM."""
    stages: list[list[tuple[str, str]]] = [[]]
    for instruction in instructions(text):
        if instruction[0] == "FROM":
            stages.append([])
        stages[-1].append(instruction)
    return stages[-1]


def _command(arguments: str) -> tuple[str, ...]:
    if arguments.startswith("["):
        return tuple(json.loads(arguments))
    return ("/bin/sh", "-c", arguments)  # the shell form, as builders store it


def _pairs(arguments: str) -> dict[str, str]:
    words = shlex.split(arguments)
    if words and "=" not in words[0]:  # the old `ENV KEY value` form
        return {words[0]: arguments.partition(" ")[2].strip()}
    return dict(word.split("=", 1) for word in words)


def config_of(stage: list[tuple[str, str]]) -> ImageConfig:
    """The configuration a stage's instructions set (a stage FROM scratch, so nothing inherited)."""
    user = workdir = ""
    env: dict[str, str] = {}
    labels: dict[str, str] = {}
    exposed: set[str] = set()
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    for keyword, arguments in stage:
        if keyword == "USER":
            user = arguments
        elif keyword == "WORKDIR":
            workdir = arguments
        elif keyword == "ENV":
            env |= _pairs(arguments)
        elif keyword == "LABEL":
            labels |= _pairs(arguments)
        elif keyword == "EXPOSE":
            exposed |= {port if "/" in port else f"{port}/tcp" for port in arguments.split()}
        elif keyword == "ENTRYPOINT":
            entrypoint = _command(arguments)
        elif keyword == "CMD":
            cmd = _command(arguments)
    return ImageConfig(user, workdir, env, frozenset(exposed), entrypoint, cmd, labels)


def dockerfile_config() -> ImageConfig:
    return config_of(final_stage(DOCKERFILE.read_text()))


def inspected_config(inspect: dict[str, Any]) -> ImageConfig:
    """The same from one image of `podman image inspect`'s output, the builder's own labels left out."""
    config = inspect["Config"]
    labels = {key: value for key, value in (config.get("Labels") or {}).items() if key not in BUILDER_LABELS}
    return ImageConfig(
        user=config.get("User", ""),
        workdir=config.get("WorkingDir", ""),
        env=dict(item.split("=", 1) for item in config.get("Env") or []),
        exposed=frozenset(config.get("ExposedPorts") or {}),
        entrypoint=tuple(config.get("Entrypoint") or ()),
        cmd=tuple(config.get("Cmd") or ()),
        labels=labels,
    )


def print_containerfile() -> str:
    """The Containerfile build.sh builds with (it needs neither root nor its tools to print it)."""
    done = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "--print-containerfile"], capture_output=True, text=True, check=True, timeout=30
    )
    return done.stdout


# -- the offline build and its private store -------------------------------------------------------------------


def image_cache() -> Path:
    return Path(os.environ.get("KHAN_IMAGE_CACHE", Path.home() / ".cache" / "khan" / "image"))


def podman_env() -> dict[str, str]:
    """The environment every podman call of the tests runs in: build.sh's private store, not the machine's."""
    return {**os.environ, "CONTAINERS_STORAGE_CONF": str(image_cache() / "storage.conf")}


def require_image_tools() -> None:
    for tool, package in IMAGE_TOOLS.items():
        tools.require_tool(tool, package)


def build_image(*options: str, timeout: float = 900) -> str:
    """Build (or reuse) the image with deploy/image/build.sh; its reference (localhost/khan:inputs-<hash>, or
    localhost/khan-dockerfile:inputs-<hash> with --dockerfile)."""
    argv = ["bash", str(BUILD_SCRIPT), *options]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"build.sh failed ({done.returncode}):\n{done.stderr[-5000:]}"
    return done.stdout.strip().splitlines()[-1]


def podman(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, check=check, env=podman_env()
    )


def inspect_image(reference: str) -> dict[str, Any]:
    (found,) = json.loads(podman("image", "inspect", reference).stdout)
    assert isinstance(found, dict)
    return found
