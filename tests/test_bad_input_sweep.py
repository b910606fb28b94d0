"""The bad-input sweep (issue 17): every CLI command that takes input x hostile inputs (path tricks, empty, huge,
unicode, control characters, option injection), each run as a user would (a subprocess). Zero tracebacks, exit 2
in every cell, and nothing changed on the host: the root namespace's own links, addresses and routes, the
stand-in NIC, the state dir and the file the path tricks point at.

``DPDKENI_SWEEP_TABLE=FILE`` writes the table (command x input -> exit code) as markdown."""
import hashlib
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import needs_root

pytestmark = [needs_root]

# every input is wrong for every slot below (an interface name "-1" or "*" would be a valid one, so none of those)
INPUTS = {
    "empty": "",
    "relative ../ to /proc/1": "../../../../proc/1",
    "path to a regular file": "{REGULAR}",
    "/proc/self/ns/net": "/proc/self/ns/net",
    "huge (5000 chars)": "x" * 5000,
    "unicode": "ünïcødé_名前_ñame",
    "control chars": "a\x01b\x7f",
    "newline injection": "eth0\n--force",
    "option injection": "--to=--force",
    "huge negative number": "-9999999999999999999999",
    "pid:1": "pid:1",
    "container path trick": "container:../../../../proc/1",
    "format/shell metachars": "%n%s{0}$(id)`id`;|&",
}

# command -> argv with X where the hostile input goes (NIC: the stand-in; TARGET: a stand-in container)
SLOTS = {
    "list": ["list", "X"],
    "show": ["show", "X"],
    "doctor": ["doctor", "X"],
    "attach NIC": ["attach", "X", "--to", "TARGET"],
    "attach --to": ["attach", "NIC", "--to", "X"],
    "attach --ifname": ["attach", "NIC", "--to", "TARGET", "--ifname", "X"],
    "attach --address": ["attach", "NIC", "--to", "TARGET", "--address", "X"],
    "attach --gateway": ["attach", "NIC", "--to", "TARGET", "--gateway", "X"],
    "attach --mtu": ["attach", "NIC", "--to", "TARGET", "--mtu", "X"],
    "attach --table": ["attach", "NIC", "--to", "TARGET", "--table", "X"],
    "attach --hugepages": ["attach", "NIC", "--to", "TARGET", "--hugepages", "X"],
    "attach --driver": ["attach", "NIC", "--to", "TARGET", "--driver", "X"],
    "attach --batch": ["attach", "--batch", "X"],
    "release": ["release", "X"],
    "recover": ["recover", "X"],
    "leases": ["leases", "X"],
    "bind": ["bind", "X", "--dry-run"],
    "unbind": ["unbind", "X", "--dry-run"],
    "bind --persist": ["bind", "X", "--persist"],
    "unbind --persist": ["unbind", "X", "--persist"],
    "overrides": ["overrides", "X"],
    "hugepages reserve": ["hugepages", "reserve", "X"],
    "hugepages show": ["hugepages", "show", "X"],
    "cdi generate --hugepages": ["cdi", "generate", "--stdout", "--hugepages", "X"],
    "watch --source": ["watch", "--source", "X"],
    "wait --mac": ["wait", "--mac", "X", "--timeout", "1"],
    "wait --pci": ["wait", "--pci", "X", "--timeout", "1"],
    "daemon --policy": ["daemon", "--policy", "X"],
    "daemon status --last": ["daemon", "status", "--last", "X"],
    "udev rules": ["udev", "rules", "X"],
    "cni serve --socket": ["cni", "serve", "--socket", "X"],
    "k8s device-plugin --config": ["k8s", "device-plugin", "--config", "X"],
    "fwd --port": ["fwd", "--mode", "rxonly", "--port", "X", "--seconds", "1"],
    "fwd --target": ["fwd", "--mode", "rxonly", "--port", "lo", "--seconds", "1", "--target", "X"],
    "pmdtest --port": ["pmdtest", "--port", "X"],
    "pmdtest --target": ["pmdtest", "--port", "lo", "--target", "X"],
    "pmdtest --dut": ["pmdtest", "--port", "lo", "--dut", "X"],
    "pmdtest --sizes": ["pmdtest", "--port", "lo", "--sizes", "X"],
    "pmdtest --peer": ["pmdtest", "--port", "lo", "--peer", "X"],
    "lab plug": ["lab", "plug", "X"],
    "lab unplug": ["lab", "unplug", "X"],
}


def _ip(*args):
    return json.loads(subprocess.run(["ip", "-j", *args], capture_output=True, text=True, check=True).stdout or "[]")


def host_snapshot(stand_in, paths, names=None):
    """What must not change: the root namespace's links other than test links (``dk*``, which the suites of
    other sessions make and remove while this runs) with their addresses, its main routes through them, the
    stand-in NIC, and the tree and contents of ``paths``. ``names``: only these links (those there before: a
    link another process makes meanwhile is not the sweep's doing; one named after an input is checked apart)."""
    def keep(name):
        return (not name.startswith("dk") or name == stand_in) and (names is None or name in names)
    links = sorted((a["ifname"], a["mtu"], a.get("operstate"), a.get("address"),
                    sorted((i["local"], i["prefixlen"]) for i in a.get("addr_info", [])))
                   for a in _ip("addr") if keep(a["ifname"]))
    routes = sorted(json.dumps(r, sort_keys=True) for r in _ip("route") if keep(r.get("dev", "")))
    files = []
    for base in paths:
        for root, dirs, names in os.walk(base):
            for n in sorted(dirs + names):
                p = os.path.join(root, n)
                st = os.lstat(p)
                digest = hashlib.sha256(open(p, "rb").read()).hexdigest() if os.path.isfile(p) else ""
                files.append((p, oct(st.st_mode), st.st_size, digest))
    return {"links": links, "routes": routes, "files": sorted(files)}


def test_every_command_refuses_every_hostile_input(cli, state_dir, stand_in_models, veth_factory,
                                                  container_factory, tmp_path):
    nic, _ = veth_factory()
    c = container_factory()
    regular = tmp_path / "regular"
    regular.write_text("keep me\n")
    lab_cache = tmp_path / "lab"            # never another session's lab: the lab commands find none here
    lab_cache.mkdir()
    env = {**os.environ, "DPDKENI_STATE_DIR": state_dir, "DPDKENI_LAB_CACHE": str(lab_cache)}

    def run(cell):
        slot, label = cell
        value = INPUTS[label].replace("{REGULAR}", str(regular))
        argv = [value if a == "X" else nic if a == "NIC" else c.target if a == "TARGET" else a for a in SLOTS[slot]]
        try:
            p = subprocess.run([sys.executable, "-m", "dpdkeni", *argv], capture_output=True, text=True, env=env,
                               cwd="/tmp", timeout=60, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return cell, "timeout", ""
        return cell, p.returncode, p.stderr

    before = host_snapshot(nic, [state_dir, str(tmp_path)])
    cells = [(s, i) for s in SLOTS for i in INPUTS]
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(run, cells))
    before_names = {link[0] for link in before["links"]}
    after = host_snapshot(nic, [state_dir, str(tmp_path)], names=before_names)
    new_links = {a["ifname"] for a in _ip("link")} - before_names
    assert not new_links & {v for v in INPUTS.values() if v}, new_links   # no link named after an input

    table = os.environ.get("DPDKENI_SWEEP_TABLE")
    if table:
        got = {cell: rc for cell, rc, _ in results}
        with open(table, "w", encoding="utf-8") as f:
            f.write("| command | " + " | ".join(INPUTS) + " |\n|---|" + "---|" * len(INPUTS) + "\n")
            for s in SLOTS:
                f.write(f"| `{s}` | " + " | ".join(str(got[(s, i)]) for i in INPUTS) + " |\n")
    tracebacks = [(cell, err[-300:]) for cell, _, err in results if "Traceback" in err]
    wrong = [(cell, rc, err.strip()[-200:]) for cell, rc, err in results if rc != 2]
    assert tracebacks == []
    assert wrong == []
    assert after == before
    assert regular.read_text() == "keep me\n"
