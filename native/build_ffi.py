"""cffi builder (API mode) for dpdkeni._native; setup.py names it in ``cffi_modules``."""
import os
import re

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = sorted(os.path.join("native", f) for f in os.listdir(HERE) if f.endswith(".c"))
CFLAGS = ["-O2", "-Wall", "-Wextra", "-std=gnu11"] + os.environ.get("DPDKENI_CFLAGS", "").split()
LDFLAGS = os.environ.get("DPDKENI_LDFLAGS", "").split()


def _cdef() -> str:
    with open(os.path.join(HERE, "fastpath.h"), encoding="utf-8") as f:
        header = f.read()
    return re.search(r"/\* CDEF-BEGIN \*/(.*)/\* CDEF-END \*/", header, re.S).group(1)


ffi = FFI()
ffi.cdef(_cdef())
ffi.set_source("dpdkeni._native", '#include "fastpath.h"', sources=SOURCES, include_dirs=["native"],
               extra_compile_args=CFLAGS, extra_link_args=LDFLAGS)

if __name__ == "__main__":
    ffi.compile(verbose=True)
