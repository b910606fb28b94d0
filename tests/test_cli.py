import json
import os

import pytest

import dpdkeni
import hostfacts


@pytest.mark.parametrize("spec,word", [
    ("nosuch0", "no NIC 'nosuch0'"),
    ("0000:zz:03.0", "malformed PCI address"),
    ("52:54:00:12:34", "malformed MAC address"),
    ("0000:00:1f.7", "no NIC"),
])
def test_bad_nic_spec_one_line_exit_2(cli, spec, word):
    out = cli("show", spec)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and word in lines[0] and lines[0].startswith("dpdkeni: error:")
    assert "Traceback" not in out.stderr and out.stdout == ""


def test_usage_error_is_one_line(cli):
    out = cli("list", "--bogus")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1


def test_show_json(cli):
    out = cli("show", "lo", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["ifname"] == "lo"


def host_expectations():
    """What doctor must say about this host, found here from the host itself: name -> (status, detail start)."""
    vfio = [n for n, ok in (("vfio-pci driver", os.path.isdir("/sys/bus/pci/drivers/vfio-pci")),
                            ("/dev/vfio/vfio", os.path.exists("/dev/vfio/vfio"))) if not ok]
    groups = os.listdir("/sys/kernel/iommu_groups") if os.path.isdir("/sys/kernel/iommu_groups") else []
    v1, v2 = hostfacts.cgroup_v1_devices(), hostfacts.cgroup_v2()
    layout = "hybrid" if v1 and v2 else "v2" if v2 else "v1" if v1 else "none"
    return {
        "vfio": ("fail", "missing: " + ", ".join(vfio)) if vfio else ("ok", "vfio-pci driver"),
        "iommu": ("ok", f"{len(groups)} IOMMU groups") if groups else
        ("warn" if os.path.exists("/sys/module/vfio/parameters/enable_unsafe_noiommu_mode") else "fail", "no IOMMU"),
        "udevd": ("ok", "running") if os.path.exists("/run/udev/control") else ("warn", "not running"),
        "cgroup": ("ok" if layout != "none" else "fail", f"layout {layout}" + (f", v2 at {v2}" if v2 else "")),
        "devices controller": ("ok", "cgroup v1 devices" if v1 else "cgroup v2") if v1 or v2 else ("fail", "no"),
        "capabilities": ("ok", "CAP_NET_ADMIN and CAP_SYS_ADMIN") if os.geteuid() == 0 else ("fail", ""),
    }


def test_doctor_json(cli):
    out = cli("doctor", "--json")
    assert out.returncode == 0, out.stderr
    checks = {c["name"]: c for c in json.loads(out.stdout)}
    for name, (status, detail) in host_expectations().items():
        assert checks[name]["status"] == status and checks[name]["detail"].startswith(detail), checks[name]
        assert (checks[name]["hint"] is None) == (status == "ok"), checks[name]
    assert all(c["status"] in ("ok", "warn", "fail") for c in checks.values())


def test_doctor_text(cli):
    out = cli("doctor")
    assert out.returncode == 0
    lines = {line[7:27].strip(): line for line in out.stdout.splitlines() if line.startswith("[")}
    for name, (status, detail) in host_expectations().items():
        assert lines[name].startswith(f"[{status:^4}] {name:<20} {detail}"), lines[name]


def test_module_and_version(cli):
    out = cli("--version")
    assert out.returncode == 0 and dpdkeni.__version__ in out.stdout


def test_all_is_sorted_and_resolves():
    assert dpdkeni.__all__ == sorted(dpdkeni.__all__)
    for name in ("Error", "GuardError", "list_nics", "find_nic", "Nic"):
        assert getattr(dpdkeni, name)


def test_parser_does_not_import_netlink_or_psutil():
    """Every command (the udev hook too) builds the whole parser: it must not pay for pyroute2 or psutil."""
    import subprocess
    import sys
    code = ("import sys; from dpdkeni.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('pyroute2', 'psutil', 'dpdkeni.handoff', 'dpdkeni.driver') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_an_unnamed_system_error_is_still_one_line(capsys, monkeypatch):
    """The last resort in main(): an OSError no layer turned into a dpdkeni Error gives one line and status 1."""
    from dpdkeni import cli as cli_mod

    def boom(args):
        raise PermissionError(13, "Permission denied", "/proc/1/ns/net")
    parser = cli_mod.build_parser
    monkeypatch.setattr(cli_mod, "build_parser", lambda: _with_func(parser(), boom))
    assert cli_mod.main(["show", "eth0"]) == 1
    err = capsys.readouterr().err
    assert err == "dpdkeni: error: Permission denied (/proc/1/ns/net)\n"


def _with_func(parser, func):
    parser.set_defaults(func=func)
    for action in parser._subparsers._group_actions:
        for sub in action.choices.values():
            sub.set_defaults(func=func)
    return parser


def test_help_groups_the_commands_by_what_a_person_does(cli):
    out = cli("--help")
    assert out.returncode == 0
    lines = out.stdout.splitlines()
    listing = lines[lines.index("  COMMAND") + 1:lines.index("options:") - 1]
    shown = [line.strip().split("  ")[0] for line in listing if not line.startswith("                ")]
    assert shown == ["inspect:", "list", "show", "doctor", "leases",
                     "hand over:", "attach", "release", "recover",
                     "DPDK pieces:", "bind", "unbind", "overrides", "hugepages", "cdi",
                     "events and daemon:", "watch", "wait", "daemon", "udev",
                     "measure:", "fwd", "pmdtest", "Kubernetes:", "cni", "k8s", "lab:", "lab"]
    assert lines[lines.index("    hand over:") + 1].startswith("      attach          hand a NIC to a container")


def test_a_command_no_group_lists_shows_under_other():
    from dpdkeni import cli as cli_mod
    assert cli_mod.command_groups(["attach", "zap", "list", "aaa"]) == [
        ("inspect", ["list"]), ("hand over", ["attach"]), ("other", ["aaa", "zap"])]
