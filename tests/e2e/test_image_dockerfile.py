"""The published deploy/Dockerfile, built here as users build it (`build.sh --dockerfile`: podman, against a
stand-in for debian:bookworm-slim made by mmdebstrap, with Debian's and PyPI's packages fetched in its RUN steps),
makes the image the offline build makes and the other image tests run: the same configuration, the same files
in the venv, the same Python."""

from __future__ import annotations

import resource

import pytest

from tests.support.container_image import build_image, inspect_image, inspected_config, podman, require_image_tools

# Installed from a directory (the Dockerfile) or from a wheel (the offline build): pip records the source only
# for the first.
PIP_SOURCE_RECORD = "./lib/python3.11/site-packages/khan-0.1.0.dist-info/direct_url.json"
RUN = ["run", "--runtime", "runc", "--rm", "--network", "none", "--read-only", "--cap-drop", "ALL"]
LIMITS = ["--ulimit", "nproc=32768:32768"]  # with nofile below: podman's defaults exceed what root may set here


@pytest.fixture(scope="module")
def images() -> tuple[str, str]:
    require_image_tools()
    return build_image(), build_image("--dockerfile")


def in_image(image: str, *command: str) -> str:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    argv = [*RUN, *LIMITS, "--ulimit", f"nofile={hard}:{hard}", "--entrypoint", command[0], image, *command[1:]]
    return podman(*argv, timeout=120).stdout


def venv_files(image: str) -> set[str]:
    listing = in_image(image, "sh", "-c", "cd /opt/khan && find . -type f -o -type l")
    return set(listing.splitlines())


def test_the_dockerfiles_image_has_the_offline_images_configuration(images: tuple[str, str]) -> None:
    offline, published = images
    assert inspected_config(inspect_image(published)) == inspected_config(inspect_image(offline))


def test_the_same_venv_and_python_in_both(images: tuple[str, str]) -> None:
    offline, published = images
    published_files = venv_files(published)
    assert len(published_files) > 1000  # khan and its dependencies, byte-compiled
    assert published_files - {PIP_SOURCE_RECORD} == venv_files(offline)
    version = ["/opt/khan/bin/python", "-c", "import sys, khan; print(sys.version, khan.__version__)"]
    assert in_image(published, *version) == in_image(offline, *version)
    assert in_image(published, "/opt/khan/bin/khan", "--version") == in_image(
        offline, "/opt/khan/bin/khan", "--version"
    )
