"""dpdkeni packaging: the Python package plus the cffi-compiled native fast path (native/)."""
from setuptools import find_packages, setup

setup(
    name="dpdkeni",
    version="0.1.0",
    description="Hand hot-plugged cloud NICs to containers as kernel interfaces or DPDK ports",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=find_packages(include=["dpdkeni", "dpdkeni.*"]),
    include_package_data=True,
    setup_requires=["cffi>=1.15"],
    cffi_modules=["native/build_ffi.py:ffi"],
    install_requires=["cffi>=1.15", "pyroute2>=0.7", "pyudev>=0.24", "psutil>=5.9"],
    extras_require={"test": ["pytest>=7", "jsonschema>=4", "pyyaml>=6"],
                    "bench": ["matplotlib>=3.5"]},   # benchmarks/seed_table.py --plot only
    entry_points={"console_scripts": ["dpdkeni=dpdkeni.cli:run", "dpdkeni-hook=dpdkeni.udev:main", "dpdkeni-cni=dpdkeni.cni_client:run"]},
    zip_safe=False,
)
