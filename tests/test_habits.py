"""The habits a maintainer expects: lint and types clean, one version, a typed package, its license, Python 3.11+."""
import os
import re
import subprocess
import sys
import tarfile

import dpdkeni

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)


def test_ruff_finds_nothing_in_the_package():
    out = subprocess.run([os.path.join(BIN, "ruff"), "check", "--no-cache", "dpdkeni"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_mypy_finds_nothing_in_the_package():
    out = subprocess.run([os.path.join(BIN, "mypy"), "--no-incremental"], cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0 and out.stdout.startswith("Success: no issues found"), out.stdout + out.stderr


def test_make_lint_runs_both_and_ci_runs_it_before_the_tests():
    with open(os.path.join(ROOT, "Makefile"), encoding="utf-8") as f:
        lint = re.search(r"^lint:.*\n((?:\t.*\n)+)", f.read(), re.M).group(1)
    assert "ruff check dpdkeni" in lint and "mypy" in lint
    with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as f:
        steps = [line.strip() for line in f if line.startswith("make ")]
    assert steps == ["make lint", "make test"]


def test_one_version_a_typed_package_its_license_and_python_311(tmp_path):
    version = subprocess.run([sys.executable, "setup.py", "--version"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()[-1]
    assert version == dpdkeni.__version__
    with open(os.path.join(ROOT, "setup.py"), encoding="utf-8") as f:
        assert dpdkeni.__version__ not in f.read()  # not written twice
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(dist)], cwd=ROOT, check=True,
                   capture_output=True)
    (sdist,) = list(dist.iterdir())
    tar = tarfile.open(sdist)
    names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert {"LICENSE", "CHANGELOG.md", "dpdkeni/py.typed"} <= names
    pkg_info = tar.extractfile(f"dpdkeni-{version}/PKG-INFO").read().decode()
    assert "Requires-Python: >=3.11" in pkg_info and "License: Apache-2.0" in pkg_info
    license_text = tar.extractfile(f"dpdkeni-{version}/LICENSE").read().decode()
    assert "Apache License\n                           Version 2.0, January 2004" in license_text
    assert "END OF TERMS AND CONDITIONS" in license_text
