"""The native fast path: a small testpmd for kernel interfaces, over the cffi-compiled C in ``native/``.

:class:`Forwarder` drives one or two interfaces with testpmd's forwarding modes (``io``, ``mac``, ``macswap``,
``txonly``, ``rxonly``) through AF_XDP or AF_PACKET. The C loop runs without the GIL in a worker thread, so the
caller can read live counters, stop it from another thread, or press Ctrl-C::

    from dpdkeni.fastpath import Forwarder
    stats = Forwarder(ports=["eth0"], mode="macswap", target="container:web1").run(seconds=5)
    print(stats.ports[0].rx_packets, stats.ports[0].tx_pps)
"""
from __future__ import annotations

import logging
import os
import re
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

from ._native import ffi, lib
from .errors import Error, InputError, NotFoundError

log = logging.getLogger(__name__)

MODES = {"io": lib.DK_MODE_IO, "mac": lib.DK_MODE_MAC, "macswap": lib.DK_MODE_MACSWAP,
         "txonly": lib.DK_MODE_TXONLY, "rxonly": lib.DK_MODE_RXONLY}
BACKENDS = ("auto", "af_xdp", "af_packet")
TX_METHODS = {"sendmmsg": lib.DK_TX_SENDMMSG, "tx_ring": lib.DK_TX_RING}
# measured on this kind of machine (benchmarks/fastpath.py --tx-methods): sendmmsg beat PACKET_TX_RING
DEFAULT_TX_METHOD = "tx_ring"   # measured faster here (README, benchmarks/fastpath.py)
# An idle queue busy-polls this long before it sleeps: while frames flow it never sleeps, so the sender is spared
# a wakeup per batch (benchmarks/fastpath.py); an idle forwarder still sleeps.
DEFAULT_SPIN_US = 1000
MAX_BURST = lib.DK_MAX_BURST
MAX_QUEUES = lib.DK_MAX_QUEUES
DEFAULT_PEER = "02:00:00:00:00:02"     # testpmd's default peer address style (locally administered)
_MAC = re.compile(r"^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$")


def inet_checksum(data: bytes) -> int:
    """RFC 1071 Internet checksum of ``data`` as the 16-bit value a header carries (big-endian)."""
    value = lib.dk_inet_csum(data, len(data))
    return int.from_bytes(int(value).to_bytes(2, "little"), "big")


def macswap(frames: List[bytearray]) -> int:
    """Swap the destination and source MACs of each frame in place; returns how many were swapped."""
    bufs = [ffi.from_buffer(f) for f in frames]
    ptrs = ffi.new("uint8_t *[]", [ffi.cast("uint8_t *", b) for b in bufs])
    lens = ffi.new("uint32_t[]", [len(f) for f in frames])
    return lib.dk_macswap_burst(ptrs, lens, len(frames))


def have_af_xdp() -> bool:
    """Whether this build has the AF_XDP backend (libxdp was there at build time)."""
    return bool(lib.dk_have_af_xdp())


@dataclass
class PortStats:
    """testpmd's per-port counters; ``*_pps``/``*_bps`` are over the last whole second."""

    port: int
    name: str
    rx_packets: int = 0
    rx_bytes: int = 0
    rx_dropped: int = 0
    rx_errors: int = 0
    tx_packets: int = 0
    tx_bytes: int = 0
    tx_dropped: int = 0
    tx_errors: int = 0
    rx_pps: int = 0
    tx_pps: int = 0
    rx_bps: int = 0
    tx_bps: int = 0


_COUNTERS = [f for f in PortStats.__dataclass_fields__ if f not in ("port", "name")]


@dataclass
class Stats:
    """What a run did: per-port counters, the backend used (and why ``auto`` fell back), elapsed seconds."""

    mode: str
    backend: str
    ports: List[PortStats]
    seconds: float = 0.0
    details: List[str] = field(default_factory=list)
    fallback: Optional[str] = None
    interrupted: bool = False

    @property
    def rx_packets(self) -> int:
        return sum(p.rx_packets for p in self.ports)

    @property
    def tx_packets(self) -> int:
        return sum(p.tx_packets for p in self.ports)

    @property
    def rx_dropped(self) -> int:
        return sum(p.rx_dropped for p in self.ports)

    @property
    def tx_dropped(self) -> int:
        return sum(p.tx_dropped for p in self.ports)

    def avg_pps(self, direction: str = "rx") -> float:
        """Average packets/s over the run (``rx`` or ``tx``)."""
        total = self.rx_packets if direction == "rx" else self.tx_packets
        return total / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> Dict[str, object]:
        d = asdict(self)
        d["rx_pps_avg"] = round(self.avg_pps("rx"))
        d["tx_pps_avg"] = round(self.avg_pps("tx"))
        return d


def _check_mac(value: Optional[str], what: str) -> Optional[bytes]:
    if value is None:
        return None
    if not _MAC.match(value):
        raise InputError(f"bad {what} {value!r}: expected a MAC like 02:00:00:00:00:02")
    return bytes(int(x, 16) for x in value.split(":"))


class Forwarder:
    """testpmd-like forwarding over kernel interfaces.

    ``ports``: one or two interface names (with two, traffic from each goes out of the other; with one, back out
    of the same). ``mode``: io, mac (source = TX port's MAC, destination = ``peer``), macswap, txonly (UDP
    198.18.0.1 -> 198.18.0.2, ``pkt_size`` bytes, ``flows`` source ports, optional ``rate`` pps and ``count``
    per port), rxonly. ``backend``: auto (AF_XDP when it works, else AF_PACKET, saying why), af_xdp, af_packet.
    ``target``: run inside that target's network namespace (``container:ID``, ``pid:N``, ``netns:NAME``).
    ``spin_us``: how long an idle queue keeps polling its rings before it sleeps in poll() (0: at once).
    """

    def __init__(self, ports: Sequence[str], mode: str = "io", backend: str = "auto", burst: int = 32,
                 queues: int = 1, cpu: Optional[int] = None, peer: Optional[str] = None,
                 target: Optional[str] = None, *, pkt_size: int = 64, flows: int = 1, rate: int = 0,
                 count: int = 0, tx_method: Optional[str] = None, zerocopy: bool = True,
                 spin_us: int = DEFAULT_SPIN_US) -> None:
        self.ports = list([ports] if isinstance(ports, str) else ports)
        self.mode, self.backend, self.burst, self.queues = mode, backend, burst, queues
        if target is not None:
            from .validate import target as check_target
            check_target(target)  # '' is not "no target": it is a mistake
        self.cpu, self.target, self.pkt_size, self.flows = cpu, target, pkt_size, flows
        self.rate, self.count, self.zerocopy, self.spin_us = rate, count, zerocopy, spin_us
        self.tx_method = tx_method or DEFAULT_TX_METHOD
        self._peer = _check_mac(peer, "peer")
        self._validate()
        self._fwd = None
        self._nsfd = -1
        self._thread: Optional[threading.Thread] = None
        self._rc = 0
        self._t0 = self._t1 = 0.0
        self._used: Optional[str] = None
        self._fallback: Optional[str] = None
        self._details: List[str] = []

    def _validate(self) -> None:
        if not 1 <= len(self.ports) <= lib.DK_MAX_PORTS:
            raise InputError(f"give one or two ports (got {len(self.ports)})")
        for name in self.ports:
            if not isinstance(name, str) or not name or len(name.encode()) > 15 or "/" in name:
                raise InputError(f"bad interface name {name!r}")
        if self.mode not in MODES:
            raise InputError(f"bad mode {self.mode!r}: one of {', '.join(MODES)}")
        if self.backend not in BACKENDS:
            raise InputError(f"bad backend {self.backend!r}: one of {', '.join(BACKENDS)}")
        if self.tx_method not in TX_METHODS:
            raise InputError(f"bad tx method {self.tx_method!r}: one of {', '.join(TX_METHODS)}")
        _int_in("burst", self.burst, 1, MAX_BURST, f"the ring holds {lib.DK_RING_SIZE} frames")
        _int_in("queues", self.queues, 1, MAX_QUEUES)
        _int_in("packet size", self.pkt_size, 60, 1514)
        _int_in("flows", self.flows, 1, 65536)
        _int_in("rate", self.rate, 0, 10 ** 9)
        _int_in("count", self.count, 0, 2 ** 62)
        _int_in("spin_us", self.spin_us, 0, 10 ** 7)
        if self.cpu is not None:
            _int_in("cpu", self.cpu, 0, (os.cpu_count() or 1) - 1)

    # -- lifecycle -------------------------------------------------------------------------------------------
    def _config(self, backend: str):
        cfg = ffi.new("struct dk_config *")
        for i, name in enumerate(self.ports):
            cfg.ifnames[i] = name.encode()
        cfg.nports = len(self.ports)
        cfg.mode = MODES[self.mode]
        cfg.backend = lib.DK_BACKEND_AF_XDP if backend == "af_xdp" else lib.DK_BACKEND_AF_PACKET
        cfg.tx_method = TX_METHODS[self.tx_method]
        cfg.burst, cfg.queues = self.burst, self.queues
        cfg.cpu = -1 if self.cpu is None else self.cpu
        cfg.pkt_size, cfg.flows, cfg.rate, cfg.count = self.pkt_size, self.flows, self.rate, self.count
        cfg.peer = self._peer or _check_mac(DEFAULT_PEER, "peer")
        cfg.netns_fd = self._nsfd
        cfg.zerocopy = 1 if self.zerocopy else 0
        cfg.spin_us = self.spin_us
        return cfg

    def _open_one(self, backend: str):
        out = ffi.new("struct dk_fwd **")
        err = ffi.new("char[]", 512)
        rc = lib.dk_fwd_open(self._config(backend), out, err, 512)
        if rc < 0:
            return None, rc, ffi.string(err).decode(errors="replace") or os.strerror(-rc)
        return out[0], 0, ""

    def open(self) -> "Forwarder":
        """Open the sockets and rings (done by :meth:`start` if not yet); errors are dpdkeni errors."""
        if self._fwd is not None:
            return self
        if self.target:
            from .netns import resolve_target
            self._nsfd = resolve_target(self.target).open()
        try:
            self._open_backend()
        except BaseException:
            self._close_nsfd()
            raise
        return self

    def _open_backend(self) -> None:
        where = f" in {self.target}" if self.target else ""
        if self.backend in ("auto", "af_xdp"):
            fwd, rc, msg = self._open_one("af_xdp")
            if fwd is not None:
                self._fwd, self._used = fwd, "af_xdp"
            elif self.backend == "af_xdp" or rc == -19 and "no interface" in msg:
                raise _open_error(rc, msg, where)
            else:
                self._fallback = f"AF_XDP unavailable ({msg}); using AF_PACKET"
                log.info("%s", self._fallback)
        if self._fwd is None:
            fwd, rc, msg = self._open_one("af_packet")
            if fwd is None:
                raise _open_error(rc, msg, where)
            self._fwd, self._used = fwd, "af_packet"
        buf = ffi.new("char[]", 160)
        self._details = []
        for i in range(len(self.ports)):
            lib.dk_fwd_describe(self._fwd, i, buf, 160)
            self._details.append(ffi.string(buf).decode())

    def start(self, seconds: Optional[float] = None) -> "Forwarder":
        """Start forwarding in a worker thread (without the GIL); ``seconds`` None or 0: until :meth:`stop`."""
        if seconds is not None and (not isinstance(seconds, (int, float)) or seconds < 0):
            raise InputError(f"bad duration {seconds!r}: seconds must be >= 0")
        if self._thread is not None:
            raise InputError("this forwarder is already running")
        self.open()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._loop, args=(float(seconds or 0),), daemon=True,
                                        name="dpdkeni-fwd")
        self._thread.start()
        return self

    def _loop(self, seconds: float) -> None:
        self._rc = lib.dk_fwd_run(self._fwd, seconds)
        self._t1 = time.monotonic()

    def stop(self) -> None:
        """Ask the forwarder to stop (any thread, returns at once)."""
        if self._fwd is not None:
            lib.dk_fwd_stop(self._fwd)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait(self, timeout: Optional[float] = None) -> Optional[Stats]:
        """Wait for the run to end (``None`` if still running after ``timeout``), then close and return Stats."""
        if self._thread is None:
            raise InputError("this forwarder was not started")
        self._thread.join(timeout)
        if self._thread.is_alive():
            return None
        stats = self.stats()
        rc = self._rc
        self.close()
        if rc < 0:
            raise Error(f"forwarding stopped: {os.strerror(-rc)}")
        return stats

    def run(self, seconds: Optional[float] = None,
            every: Optional[Callable[[Stats], None]] = None) -> Stats:
        """Forward for ``seconds`` (None: until stopped or Ctrl-C) and return the final counters; ``every`` is
        called with the live Stats as soon as forwarding starts and then once a second.

        Ctrl-C stops the forwarder and returns the Stats with ``interrupted=True``, as testpmd prints its summary
        on SIGINT (in the main thread SIGINT is caught for the duration of the run, then restored)."""
        interrupted = []

        def on_sigint(signum, frame):
            interrupted.append(signum)
            self.stop()

        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGINT, on_sigint)
        try:
            self.start(seconds)
            if every is not None:
                every(self.stats())
            while True:
                try:
                    stats = self.wait(1.0)
                except KeyboardInterrupt:          # a SIGINT that came before our handler was in place
                    interrupted.append(signal.SIGINT)
                    self.stop()
                    continue
                if stats is not None:
                    stats.interrupted = bool(interrupted)
                    return stats
                if every is not None and self._fwd is not None:
                    every(self.stats())
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
            self.close()

    def stats(self) -> Stats:
        """Live counters (safe while running)."""
        if self._fwd is None:
            raise InputError("this forwarder is not open")
        out = ffi.new("struct dk_port_stats[]", len(self.ports))
        lib.dk_fwd_stats(self._fwd, out)
        ports = [PortStats(i, name, **{k: int(getattr(out[i], k)) for k in _COUNTERS})
                 for i, name in enumerate(self.ports)]
        end = self._t1 if self._t1 else time.monotonic()
        return Stats(self.mode, self._used or "", ports, round(end - self._t0, 3) if self._t0 else 0.0,
                     list(self._details), self._fallback)

    def mac(self, port: int = 0) -> str:
        """The MAC address of ``port`` as seen by the forwarder."""
        buf = ffi.new("uint8_t[6]")
        lib.dk_fwd_mac(self._fwd, port, buf)
        return ":".join(f"{b:02x}" for b in bytes(buf))

    def close(self) -> None:
        """Stop (if running) and release every socket, ring and namespace fd."""
        if self._thread is not None and self._thread.is_alive():
            self.stop()
            self._thread.join()
        self._thread = None
        if self._fwd is not None:
            lib.dk_fwd_close(self._fwd)
            self._fwd = None
        self._close_nsfd()

    def _close_nsfd(self) -> None:
        if self._nsfd >= 0:
            os.close(self._nsfd)
            self._nsfd = -1

    def __enter__(self) -> "Forwarder":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    @property
    def native(self):
        """The open native handle (``struct dk_fwd *``) for other C entry points (dpdkeni.pmdstream)."""
        if self._fwd is None:
            raise InputError("this forwarder is not open")
        return self._fwd

    @property
    def backend_used(self) -> Optional[str]:
        """``af_xdp`` or ``af_packet`` once open."""
        return self._used

    @property
    def fallback_reason(self) -> Optional[str]:
        """Why ``auto`` did not use AF_XDP (None when it did, or was not asked)."""
        return self._fallback


def _int_in(what: str, value: object, lo: int, hi: int, why: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        extra = f"; {why}" if why else ""
        raise InputError(f"bad {what} {value!r}: must be {lo}..{hi}{extra}")


def _open_error(rc: int, msg: str, where: str) -> Error:
    if rc == -19:   # ENODEV
        return NotFoundError(f"{msg}{where}", "is the interface in another network namespace? "
                                               "use --target to run inside it")
    if rc in (-1, -13):
        return Error(msg, "run as root (CAP_NET_RAW, CAP_NET_ADMIN, CAP_BPF)")
    return Error(msg)
