"""udev integration: the rules text, and the hook udev runs for add/remove of a managed NIC.

The hook only hands the event to the daemon (one datagram on its unix socket) and returns: udev kills slow RUN
programs, and a hook that acted itself would race the daemon. With no daemon listening it writes the event
into the queue directory under the state dir, where the daemon picks it up when it starts. It imports nothing
but the standard library and the rules run it as a script under ``python3 -I -S``, so it costs about what
starting Python costs (60-70 ms on a loaded 2-core VM; the ``dpdkeni`` command takes 0.6 s to start).

Persistent bindings work the way driverctl's do: a file ``/etc/dpdkeni/overrides/pci-<bdf>`` holds a driver
name (:mod:`dpdkeni.overrides`), and a rule on the device's ``add`` runs this hook with ``--bind-override``: it
reads the file (``O_NOFOLLOW``, in a directory only root may write) and starts ``dpdkeni bind BDF --driver D``
outside udev (udev kills slow RUN programs): with ``systemd-run`` where systemd runs, else as a process of its
own session logging to ``<state>/override-<bdf>.log``.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

SOCKET_NAME = "daemon.sock"
QUEUE_DIR = "hook-queue"
RULES_PATH = "/etc/udev/rules.d/90-dpdkeni.rules"
OVERRIDES_DIR = "/etc/dpdkeni/overrides"
# the udev variables worth forwarding (everything the kernel and udev's builtins add for a net or pci device)
_BDF = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
_DRIVER = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_KEEP_PREFIXES = ("ACTION", "DEVPATH", "SUBSYSTEM", "INTERFACE", "IFINDEX", "SEQNUM", "DEVTYPE", "DRIVER",
                  "ID_", "PCI_", "MODALIAS", "USEC_INITIALIZED", "INTERFACE_OLD", "DEVPATH_OLD")


def _state_dir() -> str:
    return os.environ.get("DPDKENI_STATE_DIR") or "/run/dpdkeni"


def socket_path(state: Optional[str] = None) -> str:
    """The daemon's unix socket (under the state dir)."""
    return os.path.join(state or _state_dir(), SOCKET_NAME)


def queue_dir(state: Optional[str] = None) -> str:
    """Where the hook leaves events when no daemon listens."""
    return os.path.join(state or _state_dir(), QUEUE_DIR)


def event_from_env(env: Mapping[str, str]) -> Dict[str, str]:
    """The udev variables of one event that the daemon needs (ACTION, DEVPATH, INTERFACE, ID_*, PCI_*, …)."""
    return {k: v for k, v in env.items() if k.startswith(_KEEP_PREFIXES)}


def _private_dir(path: str, parent_fd: Optional[int] = None) -> int:
    """An fd on directory ``path`` (made 0700 if missing), opened without following a symlink and refused
    unless root's (or this user's) and not writable by group or others: what the hook writes there is read
    by root. (``dpdkeni.statedir`` holds the same rule; this file imports nothing of dpdkeni.)"""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700, dir_fd=parent_fd)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
    st = os.fstat(fd)
    if st.st_uid not in (0, os.geteuid()) or st.st_mode & 0o022:
        os.close(fd)
        raise PermissionError(f"{path} is not a private directory (uid {st.st_uid}, mode {st.st_mode & 0o7777:04o})")
    return fd


def _queue(event: Dict[str, str], state: Optional[str]) -> str:
    sfd = _private_dir(state or _state_dir())
    try:
        qfd = _private_dir(QUEUE_DIR, sfd)
    finally:
        os.close(sfd)
    name = f"{int(event.get('SEQNUM') or 0):012d}-{time.time_ns()}-{os.getpid()}.json"
    try:
        fd = os.open("." + name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=qfd)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(event, f, sort_keys=True)
        os.rename("." + name, name, src_dir_fd=qfd, dst_dir_fd=qfd)  # the daemon never sees half a file
    finally:
        os.close(qfd)
    return os.path.join(queue_dir(state), name)


def hand_over(event: Dict[str, str], state: Optional[str] = None, timeout: float = 0.2) -> Tuple[str, str]:
    """Send the event to the daemon; queue it when none listens. Returns ``("sent", path)`` or
    ``("queued", file)``."""
    path = socket_path(state)
    data = json.dumps(event, sort_keys=True).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.sendto(data, path)
            return "sent", path
        except OSError:  # no socket, nobody bound to it, or its queue is full: the daemon reads the queue later
            return "queued", _queue(event, state)


def read_queue(state: Optional[str] = None) -> List[Dict[str, str]]:
    """Take the queued hook events, oldest (lowest SEQNUM) first; the files are removed."""
    qdir = queue_dir(state)
    out = []
    for name in sorted(n for n in _listdir(qdir) if n.endswith(".json") and not n.startswith(".")):
        path = os.path.join(qdir, name)
        try:
            with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), encoding="utf-8") as f:
                out.append(json.load(f))
        except (OSError, ValueError):
            pass
        try:
            os.unlink(path)
        except OSError:
            pass
    return out


def _listdir(path: str) -> List[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _override_driver(directory: str, bdf: str) -> str:
    """The driver named by ``directory/pci-<bdf>``, read without following a symlink, from a directory that is
    root's (or this user's) and writable by nobody else; ValueError for anything else."""
    if not _BDF.match(bdf):
        raise ValueError(f"not a PCI address: {bdf!r}")
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(dfd)
        if st.st_uid not in (0, os.geteuid()) or st.st_mode & 0o022:
            raise ValueError(f"{directory} may be written by others (uid {st.st_uid}, mode {st.st_mode & 0o7777:04o})")
        fd = os.open(f"pci-{bdf}", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dfd)
        with os.fdopen(fd, "rb") as f:
            driver = f.read(256).decode(errors="replace").strip()
    finally:
        os.close(dfd)
    if not _DRIVER.match(driver):
        raise ValueError(f"{directory}/pci-{bdf} holds no driver name")
    return driver


def apply_override(directory: str, bdf: str, dpdkeni: str, state: Optional[str] = None,
                   systemd: Optional[bool] = None) -> Tuple[str, List[str]]:
    """Start ``dpdkeni bind BDF --driver D`` for the persistent binding of ``bdf`` and return at once:
    ``("systemd-run", argv)`` where systemd runs, else ``("started", argv)`` (its own session, its output in
    ``<state>/override-<bdf>.log``). OSError or ValueError when the override cannot be read or the bind started.
    ``systemd``: whether systemd runs (default: ``/run/systemd/system`` exists)."""
    argv = [dpdkeni, "bind", bdf, "--driver", _override_driver(directory, bdf)]
    if os.path.isdir("/run/systemd/system") if systemd is None else systemd:
        argv = ["systemd-run", "--no-block", "--collect", "--quiet", f"--unit=dpdkeni-bind-{bdf}", *argv]
        subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=20, check=True)
        return "systemd-run", argv
    sfd = _private_dir(state or _state_dir())
    try:
        log = os.open(f"override-{bdf}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC,
                      0o600, dir_fd=sfd)
    finally:
        os.close(sfd)
    try:
        subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    finally:
        os.close(log)
    return "started", argv


def hook_main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``dpdkeni-hook`` (and ``dpdkeni udev hook``): forward ``os.environ`` and exit. With
    ``--bind-override DIR BDF DPDKENI`` (the persistent-binding rule): start the device's bind and exit."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--bind-override"]:
        if len(argv) != 4:
            print("dpdkeni-hook: error: --bind-override DIR BDF DPDKENI", file=sys.stderr)
            return 2
        try:
            how, cmd = apply_override(argv[1], argv[2], argv[3])
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            print(f"dpdkeni-hook: error: persistent binding of {argv[2]} not applied: {exc}", file=sys.stderr)
            return 1
        print(f"dpdkeni-hook: {how} {' '.join(cmd)}", file=sys.stderr)
        return 0
    event = event_from_env(os.environ)
    if not event.get("ACTION"):
        print("dpdkeni-hook: error: no ACTION in the environment (run by udev, not by hand)", file=sys.stderr)
        return 2
    try:
        how, where = hand_over(event)
    except OSError as exc:
        print(f"dpdkeni-hook: error: cannot queue the event: {exc}", file=sys.stderr)
        return 1
    if os.environ.get("DPDKENI_HOOK_VERBOSE"):
        print(f"dpdkeni-hook: {how} {where}", file=sys.stderr)
    return 0


def _model_lines(models: Iterable, hook: str) -> List[str]:
    lines = []
    for m in models:
        devices = "|".join(f"0x{d}" for d in m.devices)
        pci_ids = "|".join(f"{m.vendor.upper()}:{d.upper()}" for d in m.devices)
        lines.append(f"# {m.name}")
        lines.append(f'ACTION=="add|remove|move", SUBSYSTEM=="net", ENV{{ID_VENDOR_ID}}=="0x{m.vendor}", '
                     f'ENV{{ID_MODEL_ID}}=="{devices}", RUN+="{hook}"')
        lines.append(f'ACTION=="add|remove|bind|unbind", SUBSYSTEM=="pci", ENV{{PCI_ID}}=="{pci_ids}", '
                     f'RUN+="{hook}"')
    return lines


def hook_command() -> List[str]:
    """How udev runs the hook: this file as a script under an isolated interpreter (``-I -S``: no site, no
    package import), which starts several times faster than the ``dpdkeni`` command."""
    return [sys.executable or "/usr/bin/python3", "-I", "-S", os.path.abspath(__file__)]


def rules_text(models: Optional[Iterable] = None, hook: Optional[str] = None, dpdkeni: Optional[str] = None,
               overrides: Optional[str] = None) -> str:
    """The udev rules: (a) the hook for the managed models' events, (b) persistent driver overrides (in
    ``overrides``, default ``$DPDKENI_OVERRIDES_DIR`` or :data:`OVERRIDES_DIR`)."""
    from .errors import InputError
    from .models import all_models
    hook = hook or " ".join(hook_command())
    dpdkeni = dpdkeni or _which("dpdkeni")
    overrides = overrides or os.environ.get("DPDKENI_OVERRIDES_DIR") or OVERRIDES_DIR
    for what, value in (("overrides directory", overrides), ("dpdkeni command", dpdkeni)):
        if not value.startswith("/") or re.search(r'[\s"\\$%]', value):
            raise InputError(f"{what} {value!r} cannot go into a udev rule (an absolute path without blanks, quotes, "
                             "'\\', '$' or '%')")
    lines = ["# Generated by 'dpdkeni udev rules': hand NIC events to the dpdkeni daemon, and re-apply",
             "# persistent driver bindings (" + overrides + "/pci-<bdf> holds the driver) like driverctl.",
             "# ID_VENDOR_ID/ID_MODEL_ID come from 75-net-description.rules; PCI_ID from the kernel.", ""]
    lines += _model_lines(models if models is not None else all_models(), hook)
    lines += ["", "# persistent bindings ('dpdkeni bind --persist'): the hook starts the bind outside udev (udev kills",
              "# slow RUN programs): systemd-run where systemd runs, else a session of its own",
              f'ACTION=="add", SUBSYSTEM=="pci", TEST=="{overrides}/pci-$kernel", '
              f'RUN+="{hook} --bind-override {overrides} $kernel {dpdkeni}"', ""]
    return "\n".join(lines)


def _which(name: str) -> str:
    here = os.path.join(os.path.dirname(os.path.abspath(sys.argv[0] or "")), name)
    for cand in (here, f"/usr/local/bin/{name}", f"/usr/bin/{name}"):
        if os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return f"/usr/local/bin/{name}"


def install_rules(text: str, path: str = RULES_PATH) -> str:
    """Write the rules file atomically; returns its path (udev reads rules.d on its own)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.rename(tmp, path)
    return path


def main() -> None:
    """Console-script entry point of ``dpdkeni-hook``."""
    sys.exit(hook_main())


if __name__ == "__main__":
    main()
