"""The skip guard (tests/skipguard.py) fails a run with a skip that is not on the allowlist, or that the allowlist
says must run on this host; an allowed skip passes."""
import os
import subprocess
import sys

import skipguard

HERE = os.path.dirname(os.path.abspath(__file__))
ENTRIES = [{"test": "tests/test_a.py::*", "reason": "r", "must_run_when": "exists:/nonexistent/dpdkeni"},
           {"test": "tests/test_b.py::*", "reason": "r", "must_run_when": "fact:root and exists:/"},
           {"test": "tests/*", "skip_reason": "needs foo*", "reason": "r", "must_run_when": "command:sh"}]


def test_verdicts():
    assert skipguard.verdict("tests/test_a.py::test_x", "whatever", ENTRIES) is None
    assert skipguard.verdict("tests/test_c.py::test_x", "whatever", ENTRIES) == "not on the skip allowlist"
    assert skipguard.verdict("tests/test_c.py::test_x", "needs foo here", ENTRIES) == \
        "must run here (command:sh holds)"
    root = skipguard.verdict("tests/test_b.py::test_x", "whatever", ENTRIES)
    assert root == ("must run here (fact:root and exists:/ holds)" if os.geteuid() == 0 else None)


def test_the_allowlist_parses():
    assert all(e["reason"] for e in skipguard.load())


def test_a_run_with_an_unlisted_skip_fails(tmp_path):
    (tmp_path / "test_x.py").write_text("import pytest\n\ndef test_skips():\n    pytest.skip('no reason')\n\n"
                                        "def test_passes():\n    pass\n")
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "skipguard", "-p", "no:cacheprovider", "-q",
                          str(tmp_path / "test_x.py")], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": HERE})
    assert run.returncode == 1, run.stdout
    assert "SKIP NOT ALLOWED: test_x.py::test_skips: skipped (no reason): not on the skip allowlist" in run.stdout
    assert "1 passed, 1 skipped" in run.stdout
