"""Network-namespace fixtures: three "hosts" on one machine, joined by a real (virtual) network.

Each test marked ``multihost`` gets a fresh :class:`Topology` (the ``netns_hosts`` fixture): three
network namespaces ``<run>-h0`` .. ``-h2``, each with its own address ``10.77.X.{1,2,3}/24`` on an
``eth0`` veth whose other end is a port of the bridge ``br0`` in a fourth namespace ``<run>-br``.
``<run>`` is ``pyc10dmh-<pytest pid>-<n>``, so names never collide. Nothing is created in the
root namespace except the four ``/run/netns`` entries (and, for :meth:`~Topology.write_hosts_files`,
``/etc/netns/<ns>/hosts``), so deleting the namespaces removes every veth and the bridge.

Processes run in a host with ``ip netns exec <ns> unshare --uts``, under
``scripts/enter_host.py``, which gives their UTS namespace the host's own hostname
(``mh-<pid>-<n>-hN``): pyc10d's host identity (hostname and kernel boot id,
:func:`pyc10d.transport.shm.setup.host_identity`) then differs between them, as between real
machines, although the boot id is the same in every namespace. Hostnames resolve nowhere unless
a test calls ``write_hosts_files``.

Links can be impaired with ``tc netem`` (:meth:`~Topology.netem`; kernels without ``sch_netem``
refuse it) or with the userspace switch ``scripts/impair.py`` (:meth:`~Topology.impair`: TAP
devices and ``tc`` mirred redirects, no netem needed), and cut (:meth:`~Topology.link_down`).

Cleanup: every process a topology starts leads its own process group (killed with SIGKILL and
reaped at teardown), then whatever is left in its namespaces (``ip netns pids``) is killed, then
the namespaces and their ``/etc/netns`` folders are deleted, and the fixture fails if any is
left. This runs in the fixture's ``finally``, so a failing or timed-out test (pytest-timeout
raises in the test) cleans up too. At the start of a session, namespaces (and ``/etc/netns``
folders) of this prefix whose pytest pid is gone or a zombie (a run killed with SIGKILL) are
swept the same way.

The layer needs Linux, root, ``ip`` and ``tc`` (iproute2) and ``unshare`` (util-linux); without
them, or where creating a network or UTS namespace fails (a container without CAP_NET_ADMIN /
CAP_SYS_ADMIN), its tests are skipped saying why.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path

import pytest

PREFIX = "pyc10dmh"
SCRIPTS = Path(__file__).parent / "scripts"
ENTER = SCRIPTS / "enter_host.py"
REPO = Path(__file__).resolve().parents[2]
HOSTS = 3
ETC_NETNS = Path("/etc/netns")  # ``ip netns exec NS`` bind-mounts /etc/netns/NS/* over /etc/*
# a tc filter (of an ingress qdisc) that sends every frame out of another device
REDIRECT = "parent ffff: protocol all u32 match u32 0 0 action mirred egress redirect dev"
IP_TIMEOUT_S = 20.0  # the most one ``ip``/``tc`` command may take
_counter = count()


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker here too, so the layer is self-contained."""
    config.addinivalue_line(
        "markers", "multihost: runs ranks in network namespaces (root, iproute2 and unshare)"
    )


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``ip ARGS`` (``tc ARGS`` when the first word is ``tc``), each argument split into
    words; raise on failure if asked."""
    words = [word for arg in args for word in arg.split()]
    argv = words if words[0] == "tc" else ["ip", *words]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=IP_TIMEOUT_S, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


def _namespaces() -> list[str]:
    """The names of the network namespaces ``ip netns`` knows."""
    out = ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _kill_inside(ns: str) -> None:
    """SIGKILL the processes still in namespace ``ns`` (only ever ones this layer started)."""
    for pid in ip("netns", "pids", ns, check=False).stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def delete_namespaces(names: list[str]) -> list[str]:
    """Empty and delete the namespaces ``names`` and their ``/etc/netns`` folders; return those
    still there afterwards."""
    for ns in names:
        _kill_inside(ns)
        ip("netns", "del", ns, check=False)
        shutil.rmtree(ETC_NETNS / ns, ignore_errors=True)
    left = set(_namespaces())
    return [ns for ns in names if ns in left or (ETC_NETNS / ns).exists()]


def _alive(pid: int) -> bool:
    """True if process ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def sweep_stale() -> list[str]:
    """Delete this layer's namespaces (and ``/etc/netns`` folders) left by dead pytest
    processes; return their names."""
    stale = []
    etc = [p.name for p in ETC_NETNS.iterdir()] if ETC_NETNS.is_dir() else []
    for ns in sorted(set(_namespaces()) | set(etc)):
        m = re.fullmatch(rf"{PREFIX}-(\d+)-.*", ns)
        if m and not _alive(int(m.group(1))):
            stale.append(ns)
    delete_namespaces(stale)
    return stale


def _unavailable() -> str | None:
    """Why this machine cannot run the layer, or None if it can."""
    if sys.platform != "linux":
        return "multihost tests need Linux network namespaces"
    if os.geteuid() != 0:
        return "multihost tests need root (to create network namespaces)"
    for tool in ("ip", "tc", "unshare"):
        if shutil.which(tool) is None:
            package = "util-linux" if tool == "unshare" else "iproute2"
            return f"multihost tests need `{tool}` ({package}), which is not installed"
    probe = f"{PREFIX}-{os.getpid()}-probe"
    try:
        made = ip("netns", "add", probe, check=False)
        if made.returncode != 0:
            return f"cannot create a network namespace: {made.stderr.strip()}"
        argv = ["ip", "netns", "exec", probe, "unshare", "--uts", "true"]
        uts = subprocess.run(argv, capture_output=True, text=True, timeout=IP_TIMEOUT_S)
        if uts.returncode != 0:
            return f"cannot create a UTS namespace: {uts.stderr.strip()}"
    finally:
        delete_namespaces([probe])
    return None


@pytest.fixture(scope="session")
def netns_available() -> None:
    """Skip (saying why) unless namespaces can be made; sweep stale ones of this prefix."""
    why = _unavailable()
    if why is not None:
        pytest.skip(why)
    sweep_stale()


@dataclass
class Host:
    """One namespace "host": its index (rank / node rank; -1 for the bridge's namespace), its
    namespace, hostname and address."""

    index: int
    ns: str
    hostname: str
    ip: str
    port: str  # its veth's end on the bridge, in the bridge namespace


@dataclass
class Proc:
    """A process started in a host: its output lines (stdout and stderr, read by a thread as
    they come) with the ``time.monotonic()`` of each."""

    host: Host
    popen: subprocess.Popen[str]
    lines: list[tuple[float, str]] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)
    reader: threading.Thread | None = None

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            with self.cond:
                self.lines.append((time.monotonic(), line.rstrip("\n")))
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def wait_line(self, pattern: str, timeout: float, start: int = 0) -> tuple[float, str]:
        """The first line matching ``pattern`` (regex), from line ``start`` on, and when it came;
        fails after ``timeout`` seconds or when the process ends without one."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for when, line in self.lines[start:]:
                    if re.search(pattern, line):
                        return when, line
                left = deadline - time.monotonic()
                done = self.reader is not None and not self.reader.is_alive()
                if left <= 0 or done:
                    raise AssertionError(
                        f"host {self.host.index}: no line matching {pattern!r} "
                        f"({'process ended' if done else f'after {timeout:g} s'}); output:\n"
                        + self.output()
                    )
                self.cond.wait(left)

    def output(self) -> str:
        """Everything the process printed so far (stdout and stderr)."""
        return "\n".join(line for _, line in self.lines)

    def finish(self, timeout: float) -> int:
        """Wait for the process to exit (and its output to be read); its exit code."""
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(
                f"host {self.host.index} still running after {timeout:g} s; output:\n"
                + self.output()
            ) from exc
        if self.reader is not None:
            self.reader.join(timeout)
        return code


class Topology:
    """Three hosts in namespaces behind one bridge; see the module docstring."""

    def __init__(self, run: str, subnet: int):
        self.run = run
        self.bridge_ns = f"{run}-br"
        tag = run.split("-", 1)[1]  # <pid>-<n>
        self.hosts = [
            Host(i, f"{run}-h{i}", f"mh-{tag}-h{i}", f"10.77.{subnet}.{i + 1}", f"p{i}")
            for i in range(HOSTS)
        ]
        self.bridge_host = Host(-1, self.bridge_ns, f"mh-{tag}-br", "", "")
        self.procs: list[Proc] = []
        self._made_etc_netns = False

    @property
    def namespaces(self) -> list[str]:
        """Every namespace of the topology (hosts first)."""
        return [h.ns for h in self.hosts] + [self.bridge_ns]

    def build(self) -> None:
        """Create the namespaces, the bridge and the veths, and bring everything up."""
        for ns in self.namespaces:
            ip("netns", "add", ns)
            ip("-n", ns, "link", "set", "lo", "up")
        br = self.bridge_ns
        ip("-n", br, "link", "add", "br0", "type", "bridge")
        ip("-n", br, "link", "set", "br0", "up")
        for h in self.hosts:
            ip("-n", h.ns, "link add eth0 type veth peer name", h.port, "netns", br)
            ip("-n", br, "link", "set", h.port, "master", "br0")
            ip("-n", br, "link", "set", h.port, "up")
            ip("-n", h.ns, "addr", "add", f"{h.ip}/24", "dev", "eth0")
            ip("-n", h.ns, "link", "set", "eth0", "up")

    def write_hosts_files(self) -> None:
        """Give every host an ``/etc/hosts`` naming all three (as a cluster's DNS would): its own
        hostname then resolves to its address. Without it, hostnames resolve nowhere."""
        text = "127.0.0.1 localhost\n" + "".join(f"{h.ip} {h.hostname}\n" for h in self.hosts)
        if not ETC_NETNS.exists():
            ETC_NETNS.mkdir()
            self._made_etc_netns = True
        for h in self.hosts:
            folder = ETC_NETNS / h.ns
            folder.mkdir()
            (folder / "hosts").write_text(text)

    def teardown(self) -> list[str]:
        """Kill every process started here, delete the namespaces; the namespaces left."""
        for p in self.procs:
            if p.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.popen.pid, signal.SIGKILL)
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.popen.wait(IP_TIMEOUT_S)
            if p.popen.stdout is not None:
                p.popen.stdout.close()
        left = delete_namespaces(self.namespaces)
        if self._made_etc_netns:
            with contextlib.suppress(OSError):  # not empty: another run uses it
                ETC_NETNS.rmdir()
        return left

    def start(
        self,
        host: Host,
        argv: list[str],
        env: dict[str, str] | None = None,
        hostname: str | None = None,
    ) -> Proc:
        """Start ``argv`` in ``host`` (its namespace and hostname), output captured line by line.

        The environment is this process's, plus ``env``; ``hostname`` replaces the host's own.
        The process leads its own process group, so teardown kills it with whatever it starts.
        """
        name = hostname or host.hostname
        full = ["ip", "netns", "exec", host.ns, "unshare", "--uts", sys.executable, str(ENTER)]
        full += [name, *argv]
        # no flight-recorder dumps into ~/.cache (a cut link makes every rank time out)
        quiet = {"PYTHONUNBUFFERED": "1", "TORCH_NCCL_DUMP_ON_TIMEOUT": "0"}
        penv = {**os.environ, **quiet, **(env or {})}
        popen = subprocess.Popen(
            full,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=penv,
            cwd=REPO,
            start_new_session=True,
        )
        proc = Proc(host, popen)
        self.procs.append(proc)
        proc.reader = threading.Thread(target=proc._read, daemon=True)
        proc.reader.start()
        return proc

    def netem(self, delay_ms: float, loss_pct: float) -> None:
        """Delay and drop packets with ``tc netem`` on every host's eth0 (its egress: so once on
        every host-to-host path); RuntimeError where the kernel lacks ``sch_netem``. GSO is
        limited to one segment first, so that netem sees wire-size packets, as a real link
        would, rather than a few 64 KiB bursts."""
        for h in self.hosts:
            ip("-n", h.ns, "link set dev eth0 gso_max_size 1500 gso_max_segs 1")
            netem = f"qdisc add dev eth0 root netem delay {delay_ms}ms loss {loss_pct}%"
            ip("tc -n", h.ns, netem)

    def impair(self, delay_ms: float, loss_pct: float, seed: int) -> Proc:
        """The same through ``scripts/impair.py`` (no ``sch_netem`` needed): a userspace switch in
        the bridge namespace. ``tc`` redirects what arrives on each host's port into its TAP
        ``tN``, and what the switch writes to ``tN`` out of that host's port; the bridge no
        longer sees any frame. Returns the switch's process (its ``STATS`` lines)."""
        taps = [f"t{h.index}" for h in self.hosts]
        script = str(SCRIPTS / "impair.py")
        argv = [sys.executable, script, str(delay_ms), str(loss_pct), str(seed), "600", *taps]
        switch = self.start(self.bridge_host, argv)
        switch.wait_line(r"^READY$", IP_TIMEOUT_S)
        br = self.bridge_ns
        for h, tap in zip(self.hosts, taps, strict=True):
            for src, dst in ((h.port, tap), (tap, h.port)):
                ip("tc -n", br, "qdisc add dev", src, "ingress")
                ip("tc -n", br, "filter add dev", src, REDIRECT, dst)
        return switch

    def link_down(self, host: Host) -> None:
        """Cut ``host`` off: its port on the bridge goes down (its eth0 loses its carrier)."""
        ip("-n", self.bridge_ns, "link", "set", host.port, "down")


@pytest.fixture
def netns_hosts(netns_available: None) -> Iterator[Topology]:
    """A fresh three-host topology, torn down (processes and namespaces) even if the test fails."""
    n = next(_counter)
    run = f"{PREFIX}-{os.getpid()}-{n}"
    subnet = (os.getpid() + n) % 250 + 1  # isolated anyway: the root namespace has no route
    topo = Topology(run, subnet)
    try:
        topo.build()
        yield topo
    finally:
        left = topo.teardown()
        assert not left, f"namespaces not deleted: {left}"
