"""``make test``: the whole suite as two halves at once, the lab's (``-m vm``) and the host's (``-m "not vm"``).

The lab half is mostly waiting on one emulated guest (single-threaded TCG: one host core), the host half mostly
on the kernel and its own processes, so run together they take about as long as the longer one instead of the sum.
Each half is a full pytest session with its own skip guard; the lab half's output goes to a log that is printed
when it ends. The run fails when either half fails. Arguments (``make test PYTEST_ARGS=...``) run one plain
pytest instead, with those arguments.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import List


def pytest_argv(*args: str) -> List[str]:
    """This interpreter's pytest with ``args``."""
    return [sys.executable, "-m", "pytest", *args]


def finish(*procs: subprocess.Popen) -> None:
    """Wait for ``procs`` to exit, through further Ctrl-Cs (a pytest interrupted mid-test still tears down)."""
    for proc in procs:
        while True:
            try:
                proc.wait()
                break
            except KeyboardInterrupt:
                continue


def main(argv: List[str]) -> int:
    """Run the suite (both halves, or one pytest with ``argv``); returns the exit code."""
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    if argv:
        one = subprocess.Popen(pytest_argv(*argv), cwd=root)
        try:
            return one.wait()
        except KeyboardInterrupt:
            finish(one)
            return 130
    start = time.monotonic()
    with tempfile.NamedTemporaryFile("w+", prefix="dpdkeni-lab-half-", suffix=".log") as log:
        print(f"suite: the lab half (-m vm) runs in the background, its output follows the host half's "
              f"(log {log.name})", flush=True)
        # its own process group: a Ctrl-C here reaches it once, from us, so its fixtures still stop the guest
        lab = subprocess.Popen(pytest_argv("-m", "vm", "-p", "no:cacheprovider"), cwd=root, stdout=log,
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        host = subprocess.Popen(pytest_argv("-m", "not vm"), cwd=root)
        try:
            host_rc = host.wait()
            host_s = time.monotonic() - start
            print(f"\nsuite: host half done in {host_s:.0f} s (exit {host_rc}); waiting for the lab half",
                  flush=True)
            lab_rc = lab.wait()
        except KeyboardInterrupt:
            # the host half got the terminal's SIGINT itself; both clean up (namespaces, the guest) before we go
            lab.send_signal(signal.SIGINT)
            finish(host, lab)
            host_rc = lab_rc = 130
            host_s = time.monotonic() - start
        lab_s = time.monotonic() - start
        print(f"\n{'=' * 30} the lab half (-m vm) {'=' * 30}", flush=True)
        log.seek(0)
        sys.stdout.write(log.read())
    wall = time.monotonic() - start
    print(f"\nsuite: host half {host_s:.0f} s (exit {host_rc}), lab half {lab_s:.0f} s (exit {lab_rc}), "
          f"wall {wall:.0f} s", flush=True)
    return host_rc or lab_rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
