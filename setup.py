"""dpdkeni packaging: the Python package plus the cffi-compiled native fast path (native/)."""
import re

from setuptools import find_packages, setup


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
    package_data={"dpdkeni": ["py.typed"]},
    setup_requires=["cffi>=1.15"],
    cffi_modules=["native/build_ffi.py:ffi"],
    install_requires=["cffi>=1.15", "pyroute2>=0.7", "pyudev>=0.24", "psutil>=5.9"],
    extras_require={"test": ["pytest>=7", "jsonschema>=4", "pyyaml>=6", "ruff>=0.6", "mypy>=1.10"],
                    "bench": ["matplotlib>=3.5"]},   # benchmarks/seed_table.py --plot only
    entry_points={"console_scripts": ["dpdkeni=dpdkeni.cli:run", "dpdkeni-hook=dpdkeni.udev:main", "dpdkeni-cni=dpdkeni.cni_client:run"]},
    zip_safe=False,
)
