"""The published deploy/Dockerfile and the offline build (deploy/image/build.sh) describe the same image: the
Containerfile the script builds with carries the Dockerfile's final-stage configuration, and that configuration is
what the DaemonSet relies on. (tests/e2e/test_image.py checks the built image's own configuration.)"""

from __future__ import annotations

import re
from typing import Any

import yaml

from tests.support.container_image import (
    BUILD_SCRIPT,
    DOCKERFILE,
    config_of,
    dockerfile_config,
    final_stage,
    instructions,
    print_containerfile,
)
from tests.support.paths import REPO

DAEMONSET = REPO / "deploy" / "base" / "daemonset.yaml"


def khan_container() -> Any:
    daemonset = yaml.safe_load(DAEMONSET.read_text())
    (container,) = daemonset["spec"]["template"]["spec"]["containers"]
    return container


def test_the_offline_containerfile_has_the_dockerfiles_final_stage_configuration() -> None:
    containerfile = print_containerfile()
    assert instructions(containerfile)[:2] == [("FROM", "scratch"), ("ADD", "rootfs.tar /")]
    assert config_of(final_stage(containerfile)) == dockerfile_config()
    # Every configuration line of the stage, verbatim: none is dropped or rewritten on the way.
    kept = [item for item in final_stage(DOCKERFILE.read_text()) if item[0] not in ("FROM", "RUN", "COPY", "ADD")]
    assert final_stage(containerfile)[2:] == kept


def test_the_image_runs_khan_agent_from_the_venv_as_root() -> None:
    config = dockerfile_config()
    assert config.user in ("0", "0:0", "root", "root:root")
    assert config.workdir == "/"
    assert config.entrypoint == ("/opt/khan/bin/khan",)
    assert config.cmd == ("agent",)
    assert config.env["PYTHONDONTWRITEBYTECODE"] == "1"  # the root filesystem is read-only
    assert config.env["PYTHONUNBUFFERED"] == "1"
    assert config.env["PATH"].split(":")[0] == "/opt/khan/bin"
    assert config.exposed == {"9986/tcp"}


def test_the_final_stage_inherits_no_configuration_from_its_base() -> None:
    # debian:bookworm-slim's configuration sets PATH and CMD ["bash"]: the final stage sets both itself, so none
    # of the published image's configuration comes from the base, and a FROM scratch image can match it.
    stage = final_stage(DOCKERFILE.read_text())
    assert stage[0] == ("FROM", "debian:bookworm-slim")
    assert "PATH" in dockerfile_config().env
    assert any(keyword == "CMD" for keyword, _ in stage)


def test_the_daemonset_runs_what_the_image_is_made_for() -> None:
    config = dockerfile_config()
    container = khan_container()
    assert container["securityContext"]["runAsUser"] == 0
    assert container["securityContext"]["capabilities"]["add"] == ["NET_ADMIN"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["args"][0] == config.cmd[0]
    (port,) = container["ports"]
    assert {f"{port['containerPort']}/{port['protocol'].lower()}"} == config.exposed


def test_both_builds_use_the_same_debian_release() -> None:
    suite = re.search(r"^SUITE=(\S+)$", BUILD_SCRIPT.read_text(), re.MULTILINE)
    assert suite is not None
    bases = [arguments.split()[0] for keyword, arguments in instructions(DOCKERFILE.read_text()) if keyword == "FROM"]
    assert bases == [f"debian:{suite.group(1)}-slim"] * 2
