"""pyc10d across a real network: one rank per network namespace (see conftest.py).

Each test builds three namespace hosts behind a bridge, each with its own address and hostname,
and runs a world-3 job with rank (or node) N in host N and ``MASTER_ADDR`` = host 0's address.
``PYC10D_TRANSPORT`` stays ``auto``: pyc10d must itself see three hosts and use TCP.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import pytest

from .conftest import SCRIPTS, Host, Proc, Topology, ip

pytestmark = pytest.mark.multihost

MASTER_PORT = "29500"  # each run's namespaces are fresh: every port is free
SIZES = ["7", "300000"]  # 28 bytes and 1.2 MiB per tensor (direct and ring algorithms)
# checked on every rank at every size (gather and send_recv: on rank 2, their receiver)
OPS = ("all_reduce", "all_reduce_max", "broadcast", "all_gather", "reduce_scatter")
OPS += ("all_to_all", "scatter", "isend_irecv", "barrier")
JOB_TIMEOUT_S = 60.0  # generous for a loaded CI machine; a hang still fails long before pytest's
GROUP_TIMEOUT_S = 5.0  # the link-down test's process-group timeout
SLACK_S = 10.0  # how late after that timeout its error may come (a loaded machine)


def start_ranks(topo: Topology, script: str, *args: str, hostname: str | None = None) -> list[Proc]:
    """Start ``script ARGS`` as rank N of 3 in host N (``env://``, master = host 0)."""
    procs = []
    for h in topo.hosts:
        env = {
            "MASTER_ADDR": topo.hosts[0].ip,
            "MASTER_PORT": MASTER_PORT,
            "RANK": str(h.index),
            "WORLD_SIZE": str(len(topo.hosts)),
            "PYC10D_TRANSPORT": "auto",
        }
        argv = [sys.executable, str(SCRIPTS / script), *args]
        procs.append(topo.start(h, argv, env, hostname=hostname))
    return procs


def expect_success(procs: list[Proc], timeout: float = JOB_TIMEOUT_S) -> None:
    """Every process exits 0 (within ``timeout`` seconds) and printed ``DONE``."""
    for p in procs:
        code = p.finish(timeout)
        assert code == 0, f"host {p.host.index} exited {code}:\n{p.output()}"
        p.wait_line(r"^DONE$", 0)


def passed(proc: Proc) -> set[str]:
    """The ``PASS`` lines of a rank, as ``op size``."""
    return {line[5:] for _, line in proc.lines if line.startswith("PASS ")}


def check_collectives(procs: list[Proc]) -> None:
    """Every rank ran every check at every size, each on its own host, with TCP between them."""
    identities = []
    for p in procs:
        _, line = p.wait_line(r"^IDENTITY ", 0)
        ident, _, shm, arena = line.split()[1:]
        assert ident.startswith(f"{p.host.hostname}/"), line
        assert (shm, arena) == ("shm_peers=-", "arena=False"), line
        identities.append(ident)
    assert len(set(identities)) == 3, identities
    for p in procs:
        want = {f"{op} {n}" for op in OPS for n in SIZES}
        assert want <= passed(p), f"host {p.host.index} misses {want - passed(p)}"
    assert {f"{op} {n}" for op in ("gather", "send_recv") for n in SIZES} <= passed(procs[2])


@pytest.mark.timeout(120)
def test_collectives_across_hosts(netns_hosts: Topology) -> None:
    """Every collective and send/recv is correct over the bridge, at 28 B and 1.2 MiB; pyc10d
    sees three hosts (no shared-memory arena or rings)."""
    procs = start_ranks(netns_hosts, "collectives.py", *SIZES)
    expect_success(procs)
    check_collectives(procs)


def netem_stats(topo: Topology) -> tuple[int, int]:
    """Packets sent and dropped by the netem qdiscs of the hosts' eth0, summed."""
    sent = dropped = 0
    for h in topo.hosts:
        out = ip("tc -s -n", h.ns, "qdisc show dev eth0").stdout
        assert "netem" in out, out
        m = re.search(r"Sent \d+ bytes (\d+) pkt \(dropped (\d+)", out)
        assert m, out
        sent += int(m.group(1))
        dropped += int(m.group(2))
    return sent, dropped


def switch_stats(switch: Proc) -> tuple[int, int]:
    """Frames seen and dropped by the userspace impairer: its first ``STATS`` line from now on
    (called once the job has ended, so it counts everything the job sent)."""
    _, line = switch.wait_line(r"^STATS ", 5, start=len(switch.lines))
    m = re.fullmatch(r"STATS frames=(\d+) dropped=(\d+)", line)
    assert m, line
    return int(m.group(1)), int(m.group(2))


@pytest.mark.timeout(150)
@pytest.mark.parametrize("mechanism", ["netem", "userspace"])
def test_collectives_with_delay_and_loss(netns_hosts: Topology, mechanism: str) -> None:
    """The same checks with 5 ms delay and 1% frame loss on every host-to-host path: TCP
    retransmits, results stay exact. ``netem``: ``tc netem`` on each host's veth (skipped where
    the kernel lacks ``sch_netem``); ``userspace``: ``scripts/impair.py`` between the veths. Their
    counters show that frames really were dropped."""
    switch = None
    if mechanism == "netem":
        try:
            netns_hosts.netem(delay_ms=5, loss_pct=1)
        except RuntimeError as exc:  # "Specified qdisc kind is unknown": no sch_netem
            pytest.skip(f"tc netem unavailable here: {exc}")
    else:
        switch = netns_hosts.impair(delay_ms=5, loss_pct=1, seed=os.getpid())
    start = time.monotonic()
    procs = start_ranks(netns_hosts, "collectives.py", *SIZES)
    expect_success(procs, timeout=JOB_TIMEOUT_S * 1.5)
    check_collectives(procs)
    took = time.monotonic() - start
    sent, dropped = netem_stats(netns_hosts) if switch is None else switch_stats(switch)
    assert sent > 1000 and dropped > 0, (sent, dropped, took)
    for p in procs:  # each allreduce of the chain waits for at least one delayed message
        _, line = p.wait_line(r"^CHAIN10 ", 0)
        assert float(line.split()[1]) >= 0.04, line  # theory: about 10 x 5 ms


def named_ranks(text: str) -> set[int]:
    """The ranks an error message names: ``rank 2``, ``ranks 0, 2``, ``ranks [0, 2]``."""
    found = set()
    for group in re.findall(r"\branks?\s+\[?(\d+(?:\s*,\s*\d+)*)", text):
        found.update(int(r) for r in re.findall(r"\d+", group))
    return found


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("elements", "names_lost_rank"),
    [
        (1000, True),  # direct exchange: every rank waits on rank 2's own message
        # ring: rank 1 may wait on rank 0 (alive, itself waiting on rank 2): the blame is passed
        # along the chain, so it names rank 2 too
        (300_000, True),
    ],
)
def test_link_down_fails_within_timeout(
    netns_hosts: Topology, elements: int, names_lost_rank: bool
) -> None:
    """Rank 2's link goes down while the ranks loop allreduces: every rank fails within the
    group timeout (plus slack) after the cut, with an error naming a peer, and exits; none
    hangs. With the direct algorithm, the errors of ranks 0 and 1 name rank 2."""
    procs = start_ranks(netns_hosts, "allreduce_loop.py", str(GROUP_TIMEOUT_S), str(elements))
    for p in procs:
        p.wait_line(r"^ITER 20$", JOB_TIMEOUT_S)
    cut = time.monotonic()
    netns_hosts.link_down(netns_hosts.hosts[2])
    for p in procs:
        _, line = p.wait_line(r"^ERROR ", GROUP_TIMEOUT_S + SLACK_S)
        stamp, message = line.split(" ", 2)[1:]
        assert cut < float(stamp) <= cut + GROUP_TIMEOUT_S + SLACK_S, (cut, line)
        named = named_ranks(message.split("failed:", 1)[-1])  # not "[rank N] ... failed:"
        assert named and named <= {0, 1, 2}, line
        if names_lost_rank and p.host.index != 2:
            assert 2 in named, line
    for p in procs:
        assert p.finish(SLACK_S) == 3, p.output()


def run_launchers(topo: Topology, flags: list[str]) -> list[tuple[Host, dict[str, str]]]:
    """``pyc10d-run FLAGS --nnodes 3 --nproc-per-node 1 launched.py`` on every host; each must
    exit 0. Each host with what its worker printed (``RESULT`` fields)."""
    launcher = Path(sys.executable).with_name("pyc10d-run")
    cmd = [str(launcher)] if launcher.exists() else [sys.executable, "-m", "pyc10d.run"]
    procs = []
    for h in topo.hosts:
        node_flags = [f.format(node=h.index) for f in flags]
        job = ["--nnodes", "3", "--nproc-per-node", "1", "--timeout", "90"]
        job.append(str(SCRIPTS / "launched.py"))
        argv = [*cmd, *node_flags, *job]
        procs.append(topo.start(h, argv, {"PYC10D_TRANSPORT": "auto"}))
    results = []
    for p in procs:
        code = p.finish(JOB_TIMEOUT_S)
        assert code == 0, f"node on host {p.host.index} exited {code}:\n{p.output()}"
        _, line = p.wait_line(r"RESULT ", 0)
        fields = dict(item.split("=", 1) for item in line.split()[1:])
        assert (fields["world"], fields["sum"]) == ("3", "6"), line
        assert fields["rank"] == fields["node"], line  # one worker per node
        assert fields["host"] == p.host.hostname, line
        results.append((p.host, fields))
    return results


@pytest.mark.timeout(120)
def test_launcher_multi_node_static(netns_hosts: Topology) -> None:
    """``pyc10d-run --nnodes 3 --node-rank R --master-addr <host 0> --master-port P`` on each
    host: one job of three ranks, rank R on host R, one allreduce right. No name resolution."""
    master = netns_hosts.hosts[0].ip
    flags = ["--node-rank", "{node}", "--master-addr", master, "--master-port", MASTER_PORT]
    for host, fields in run_launchers(netns_hosts, flags):
        assert (fields["node"], fields["master"]) == (str(host.index), master), fields


def c10d_flags(topo: Topology) -> list[str]:
    """The flags of a c10d rendezvous at host 0's address."""
    endpoint = f"{topo.hosts[0].ip}:29400"
    return ["--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "multihost"]


@pytest.mark.timeout(120)
def test_launcher_multi_node_c10d(netns_hosts: Topology) -> None:
    """``pyc10d-run --rdzv-backend c10d --rdzv-endpoint <host 0>:29400`` on each host, where
    hostnames resolve (``/etc/hosts``): host 0's launcher serves the store, the nodes take ranks
    0..2 as they join, and the workers' master is the host of node 0."""
    netns_hosts.write_hosts_files()
    results = run_launchers(netns_hosts, c10d_flags(netns_hosts))
    assert sorted(fields["node"] for _, fields in results) == ["0", "1", "2"], results
    node0 = next(host for host, fields in results if fields["node"] == "0")
    assert {fields["master"] for _, fields in results} == {node0.ip}, results


@pytest.mark.timeout(120)
def test_launcher_c10d_without_name_resolution(netns_hosts: Topology) -> None:
    """The same where hostnames resolve nowhere (no ``/etc/hosts`` entry, no DNS): the endpoint
    is an address, so no name needs resolving."""
    run_launchers(netns_hosts, c10d_flags(netns_hosts))


@pytest.mark.timeout(120)
def test_same_hostname_other_network_namespace(netns_hosts: Topology) -> None:
    """Namespaces that share a hostname (and, as always, the boot id) but not a network
    namespace: pyc10d must not treat them as one host (e.g. containers with --uts=host)."""
    same = f"mh-{netns_hosts.run}-same"[:63]
    procs = start_ranks(netns_hosts, "collectives.py", "7", hostname=same)
    expect_success(procs)
