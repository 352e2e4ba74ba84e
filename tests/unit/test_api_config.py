"""Which API configuration is used: --kubeconfig, then in-cluster, then KUBECONFIG, then ~/.kube/config; an explicit
choice that names no readable file is an error, finding nothing is not. Only the environ passed in is read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from khan.inventory.api_config import ApiConfig, ApiConfigError, find_api_config

IN_CLUSTER = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}


def kubeconfig_file(directory: Path, name: str = "config") -> str:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n")
    return str(path)


def empty_home(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir()
    return {"HOME": str(home)}


def test_explicit_kubeconfig(tmp_path: Path) -> None:
    path = kubeconfig_file(tmp_path)
    config = find_api_config(path, empty_home(tmp_path))
    assert config == ApiConfig(path, "--kubeconfig")
    assert config.in_cluster is False


def test_explicit_kubeconfig_wins_over_everything_else(tmp_path: Path) -> None:
    path = kubeconfig_file(tmp_path / "explicit")
    home = tmp_path / "home"
    kubeconfig_file(home / ".kube")
    listed = kubeconfig_file(tmp_path / "listed")
    environ = {**IN_CLUSTER, "KUBECONFIG": listed, "HOME": str(home)}
    assert find_api_config(path, environ) == ApiConfig(path, "--kubeconfig")


def test_explicit_kubeconfig_that_is_missing_is_an_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere" / "config")
    with pytest.raises(ApiConfigError, match="no readable file") as raised:
        find_api_config(missing, {**IN_CLUSTER, "HOME": str(tmp_path)})
    assert missing in str(raised.value)
    assert "--kubeconfig" in str(raised.value)


def test_empty_explicit_kubeconfig_counts_as_not_given(tmp_path: Path) -> None:
    assert find_api_config("", IN_CLUSTER) == ApiConfig(None, "in-cluster")
    assert find_api_config(None, empty_home(tmp_path)) is None


def test_in_cluster_when_the_service_host_is_set(tmp_path: Path) -> None:
    home = tmp_path / "home"
    kubeconfig_file(home / ".kube")
    listed = kubeconfig_file(tmp_path / "listed")
    config = find_api_config(None, {**IN_CLUSTER, "KUBECONFIG": listed, "HOME": str(home)})
    assert config == ApiConfig(None, "in-cluster")
    assert config.in_cluster is True


def test_empty_service_host_is_not_in_cluster(tmp_path: Path) -> None:
    assert find_api_config(None, {"KUBERNETES_SERVICE_HOST": "", **empty_home(tmp_path)}) is None


def test_kubeconfig_variable_keeps_only_readable_files(tmp_path: Path) -> None:
    first = kubeconfig_file(tmp_path / "a")
    missing = str(tmp_path / "b" / "config")
    listed = os.pathsep.join([missing, first])
    config = find_api_config(None, {"KUBECONFIG": listed, **empty_home(tmp_path)})
    assert config == ApiConfig(first, "KUBECONFIG")
    assert config.in_cluster is False


def test_kubeconfig_variable_keeps_every_readable_file_in_order(tmp_path: Path) -> None:
    first = kubeconfig_file(tmp_path / "a")
    second = kubeconfig_file(tmp_path / "b")
    listed = os.pathsep.join([second, "", str(tmp_path / "missing"), first])
    config = find_api_config(None, {"KUBECONFIG": listed, **empty_home(tmp_path)})
    assert config == ApiConfig(os.pathsep.join([second, first]), "KUBECONFIG")


def test_kubeconfig_variable_naming_only_missing_files_is_an_error(tmp_path: Path) -> None:
    home = tmp_path / "home"
    kubeconfig_file(home / ".kube")  # not a fallback once KUBECONFIG was set
    listed = os.pathsep.join([str(tmp_path / "x"), str(tmp_path / "y")])
    with pytest.raises(ApiConfigError, match="names no readable file") as raised:
        find_api_config(None, {"KUBECONFIG": listed, "HOME": str(home)})
    assert listed in str(raised.value)


def test_kubeconfig_variable_wins_over_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    kubeconfig_file(home / ".kube")
    listed = kubeconfig_file(tmp_path / "listed")
    assert find_api_config(None, {"KUBECONFIG": listed, "HOME": str(home)}) == ApiConfig(listed, "KUBECONFIG")


def test_empty_kubeconfig_variable_falls_through_to_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    path = kubeconfig_file(home / ".kube")
    assert find_api_config(None, {"KUBECONFIG": "", "HOME": str(home)}) == ApiConfig(path, "~/.kube/config")


def test_home_kube_config(tmp_path: Path) -> None:
    home = tmp_path / "home"
    path = kubeconfig_file(home / ".kube")
    config = find_api_config(None, {"HOME": str(home)})
    assert config == ApiConfig(path, "~/.kube/config")
    assert config.kubeconfig == str(home / ".kube" / "config")


def test_nothing_found_is_none(tmp_path: Path) -> None:
    assert find_api_config(None, empty_home(tmp_path)) is None
    # A .kube directory without a config file in it is still nothing.
    (tmp_path / "home" / ".kube").mkdir()
    assert find_api_config(None, {"HOME": str(tmp_path / "home")}) is None
