"""cffi builder (API mode) for dpdkeni._native; setup.py names it in ``cffi_modules``.

AF_XDP needs libxdp/libbpf (Debian: libxdp-dev, libbpf-dev); without their headers the module is built without
it and ``lib.dk_have_af_xdp()`` says so.
"""
import os
import re

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = sorted(os.path.join("native", f) for f in os.listdir(HERE) if f.endswith(".c") and f != "cni_client.c")
CFLAGS = ["-O2", "-Wall", "-Wextra", "-std=gnu11"] + os.environ.get("DPDKENI_CFLAGS", "").split()
LDFLAGS = os.environ.get("DPDKENI_LDFLAGS", "").split()
HAVE_XDP = os.path.exists("/usr/include/xdp/xsk.h") and os.path.exists("/usr/include/bpf/libbpf.h") \
    and not os.environ.get("DPDKENI_NO_XDP")


def _cdef() -> str:
    with open(os.path.join(HERE, "fastpath.h"), encoding="utf-8") as f:
        header = f.read()
    cdef = re.search(r"/\* CDEF-BEGIN \*/(.*)/\* CDEF-END \*/", header, re.S).group(1)
    # the constants defined before the block: the compiler fills in their values
    names = re.findall(r"#define (DK_[A-Z_]+) ", header) + re.findall(r"\b(DK_[A-Z_]+) = ", header)
    return cdef + "".join(f"#define {name} ...\n" for name in names)


ffi = FFI()
ffi.cdef(_cdef())
ffi.set_source("dpdkeni._native", '#include "fastpath.h"', sources=SOURCES, include_dirs=["native"],
               define_macros=[("DK_HAVE_XDP", "1")] if HAVE_XDP else [],
               libraries=(["xdp", "bpf"] if HAVE_XDP else []) + ["pthread"],
               extra_compile_args=CFLAGS, extra_link_args=LDFLAGS)

if __name__ == "__main__":
    ffi.compile(verbose=True)
