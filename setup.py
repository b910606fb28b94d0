"""dpdkeni packaging: the Python package, the cffi-compiled native fast path (native/) and the C ``dpdkeni-cni``
client that container runtimes execute (native/cni_client.c, installed as a script beside ``dpdkeni``)."""
import os
import re
import shlex
import subprocess

from setuptools import find_packages, setup
from distutils.command.build_scripts import build_scripts  # setuptools provides distutils

CNI_CLIENT = "native/cni_client.c"
CNI_BINARY = "build/cni/dpdkeni-cni"  # made by BuildScripts before the scripts are copied


class BuildScripts(build_scripts):
    """Compile the C CNI client into build/cni/dpdkeni-cni and install it with the scripts (a runtime starts it
    for every pod network call: it must not pay Python's start-up; the Python plugin is ``dpdkeni-cni-py``)."""

    def run(self) -> None:
        os.makedirs(os.path.dirname(CNI_BINARY), exist_ok=True)
        cmd = shlex.split(os.environ.get("CC", "cc")) + ["-O2", "-Wall", "-Wextra", "-std=gnu11", "-o", CNI_BINARY,
                                                          CNI_CLIENT]
        self.announce(" ".join(cmd), level=2)
        subprocess.run(cmd, check=True)
        super().run()

    def _copy_script(self, script, outfiles, updated_files):  # type: ignore[no-untyped-def]
        if script != CNI_BINARY:  # distutils reads a script as Python source to adjust its #! line
            return super()._copy_script(script, outfiles, updated_files)
        outfile = os.path.join(self.build_dir, os.path.basename(script))
        outfiles.append(outfile)
        updated_files.append(outfile)
        self.copy_file(script, outfile)
        return None


def _version() -> str:
    """The one version, ``dpdkeni.__version__`` (read, not imported: the dependencies may not be installed)."""
    with open("dpdkeni/__init__.py", encoding="utf-8") as f:
        return re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)


setup(
    name="dpdkeni",
    version=_version(),
    description="Hand hot-plugged cloud NICs to containers as kernel interfaces or DPDK ports",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    license_files=["LICENSE"],
    python_requires=">=3.11",  # tomllib (policies, models files); CI runs 3.11
    packages=find_packages(include=["dpdkeni", "dpdkeni.*"]),
    include_package_data=True,
    package_data={"dpdkeni": ["py.typed", "k8s/protos/*.proto"]},
    setup_requires=["cffi>=1.15"],
    cffi_modules=["native/build_ffi.py:ffi"],
    install_requires=["cffi>=1.15", "pyroute2>=0.7", "pyudev>=0.24", "psutil>=5.9"],
    extras_require={"test": ["pytest>=7", "jsonschema>=4", "pyyaml>=6", "ruff>=0.6", "mypy>=1.10",
                             "grpcio>=1.50", "grpcio-tools>=1.50"],  # tests/crirun.py: a CRI client
                    "k8s": ["grpcio>=1.50", "grpcio-tools>=1.50"],  # dpdkeni k8s device-plugin
                    "bench": ["matplotlib>=3.5"]},   # pmdtest --plot, benchmarks/seed_table.py --plot
    entry_points={"console_scripts": ["dpdkeni=dpdkeni.cli:run", "dpdkeni-hook=dpdkeni.udev:main",
                                      "dpdkeni-cni-py=dpdkeni.cni_client:run"]},
    scripts=[CNI_BINARY],
    cmdclass={"build_scripts": BuildScripts},
    zip_safe=False,
)
