"""An sdist carries the native sources and builds with pip (no network: the venv's setuptools and cffi)."""
import os
import subprocess
import sys
import tarfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_sdist_builds_and_installs(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(dist)], cwd=ROOT, check=True,
                   capture_output=True)
    (sdist,) = list(dist.iterdir())
    names = tarfile.open(sdist).getnames()
    for needed in ("native/fastpath.h", "native/csum.c", "native/build_ffi.py", "README.md", "Makefile"):
        assert any(n.endswith(needed) for n in names), needed
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(sdist)], check=True, capture_output=True)
    code = "import dpdkeni.fastpath as f, dpdkeni; print(f.inet_checksum(b'\\x00\\x01'), dpdkeni.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path), env={**os.environ,
                         "PYTHONPATH": str(target)}, capture_output=True, text=True, check=True)
    value, path = out.stdout.split()
    assert value == str(0xFFFE) and path.startswith(str(target))
    # the CNI binary runtimes execute is the compiled client (native/cni_client.c), its Python fallback beside it
    for needed in ("native/cni_client.c",):
        assert any(n.endswith(needed) for n in names), needed
    with open(target / "bin" / "dpdkeni-cni", "rb") as f:
        assert f.read(4) == b"\x7fELF"
    assert os.access(target / "bin" / "dpdkeni-cni-py", os.X_OK)
