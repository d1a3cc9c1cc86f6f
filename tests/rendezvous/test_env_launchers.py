"""``env://`` under torchrun, SLURM and MPI launchers: ``rendezvous.launch_env`` and rendezvous."""

from __future__ import annotations

import pytest

import pyc10d as dist
from pyc10d.rendezvous import launch_env
from pyc10d.rendezvous.launch_env import (
    LaunchEnvError,
    detect_local_rank,
    detect_master_addr,
    detect_master_port,
    detect_rank_and_world_size,
    expand_nodelist,
    first_host,
)
from pyc10d.testing import free_port

pytestmark = pytest.mark.timeout(30)

LAUNCHER_VARS = [
    name
    for family in launch_env.FAMILIES
    for name in (family.rank, family.world_size, family.local_rank)
] + ["MASTER_ADDR", "MASTER_PORT", "SLURM_JOB_ID", *launch_env.SLURM_NODELIST_VARS]


@pytest.fixture
def clean_env(monkeypatch):
    """No launcher variable from the machine running the tests leaks in."""
    for name in LAUNCHER_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    "environ, expected",
    [
        ({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}, (3, 8, 1, "env")),
        (
            {"SLURM_PROCID": "5", "SLURM_NTASKS": "6", "SLURM_LOCALID": "2"},
            (5, 6, 2, "SLURM"),
        ),
        (
            {
                "OMPI_COMM_WORLD_RANK": "2",
                "OMPI_COMM_WORLD_SIZE": "4",
                "OMPI_COMM_WORLD_LOCAL_RANK": "0",
            },
            (2, 4, 0, "Open MPI"),
        ),
        (
            {"PMI_RANK": "1", "PMI_SIZE": "2", "MPI_LOCALRANKID": "1"},
            (1, 2, 1, "MPICH/Hydra (PMI)"),
        ),
        (
            {
                "MV2_COMM_WORLD_RANK": "7",
                "MV2_COMM_WORLD_SIZE": "9",
                "MV2_COMM_WORLD_LOCAL_RANK": "3",
            },
            (7, 9, 3, "MVAPICH"),
        ),
    ],
    ids=["torchrun", "slurm", "openmpi", "mpich", "mvapich"],
)
def test_each_launcher_family(environ, expected):
    rank, world_size, source = detect_rank_and_world_size(environ)
    local_rank, _ = detect_local_rank(environ)
    assert (rank, world_size, local_rank, source) == expected


def test_explicit_variables_win_and_mixed_sources_are_named():
    slurm = {"SLURM_PROCID": "5", "SLURM_NTASKS": "6", "OMPI_COMM_WORLD_RANK": "1"}
    assert detect_rank_and_world_size({**slurm, "RANK": "0", "WORLD_SIZE": "1"}) == (0, 1, "env")
    # MPI's own variables describe the processes better than an enclosing SLURM allocation's
    rank, size, source = detect_rank_and_world_size({**slurm, "WORLD_SIZE": "2"})
    assert (rank, size) == (1, 2)
    assert source == "Open MPI (rank), env (world size)"


def test_missing_and_malformed_variables_are_named():
    with pytest.raises(LaunchEnvError, match=r"RANK expected, but not set .*SLURM_PROCID"):
        detect_rank_and_world_size({"WORLD_SIZE": "2"})
    with pytest.raises(LaunchEnvError, match="SLURM_NTASKS is not an integer: 'x'"):
        detect_rank_and_world_size({"SLURM_PROCID": "0", "SLURM_NTASKS": "x"})
    with pytest.raises(LaunchEnvError, match="MASTER_ADDR expected, but not set"):
        detect_master_addr({"OMPI_COMM_WORLD_RANK": "0"})
    with pytest.raises(LaunchEnvError, match="MASTER_PORT expected, but not set"):
        detect_master_port({"PMI_RANK": "0"})


@pytest.mark.parametrize(
    "nodelist, hosts",
    [
        ("gpu7", ["gpu7"]),
        ("node[01-04],gpu7", ["node01", "node02", "node03", "node04", "gpu7"]),
        ("n[8-10,12]-ib", ["n8-ib", "n9-ib", "n10-ib", "n12-ib"]),
        ("rack[1-2]-n[0-1]", ["rack1-n0", "rack1-n1", "rack2-n0", "rack2-n1"]),
        ("a,b[007-008]", ["a", "b007", "b008"]),
    ],
)
def test_slurm_nodelist(nodelist, hosts):
    assert list(expand_nodelist(nodelist)) == hosts
    assert first_host(nodelist) == hosts[0]


@pytest.mark.parametrize("bad", ["node[01-04", "node]1[", "n[a-b]", ""])
def test_bad_slurm_nodelist(bad):
    with pytest.raises(LaunchEnvError):
        first_host(bad)


def test_slurm_master_is_derived():
    environ = {"SLURM_JOB_NODELIST": "cn[003-004],cn9", "SLURM_JOB_ID": "4812345"}
    assert detect_master_addr(environ) == ("cn003", "SLURM node list")
    assert detect_master_port(environ) == (15000 + 2345, "SLURM_JOB_ID")
    explicit = {**environ, "MASTER_ADDR": "head", "MASTER_PORT": "1234"}
    assert detect_master_addr(explicit)[0] == "head"
    assert detect_master_port(explicit)[0] == 1234
    assert detect_master_addr({"SLURM_NODELIST": "x[1-2]"})[0] == "x1"


def _rendezvous_world_of_one() -> None:
    store, rank, world_size = next(dist.rendezvous("env://"))
    assert (rank, world_size) == (0, 1)
    store.set("k", "v")
    assert store.get("k") == b"v"


@pytest.mark.parametrize(
    "variables",
    [
        {"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_LOCALID": "0"},
        {"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "1"},
        {"PMI_RANK": "0", "PMI_SIZE": "1"},
        {"MV2_COMM_WORLD_RANK": "0", "MV2_COMM_WORLD_SIZE": "1"},
    ],
    ids=["slurm", "openmpi", "mpich", "mvapich"],
)
def test_rendezvous_env_under_launcher(clean_env, variables):
    for name, value in variables.items():
        clean_env.setenv(name, value)
    clean_env.setenv("MASTER_ADDR", "127.0.0.1")
    clean_env.setenv("MASTER_PORT", str(free_port()))
    _rendezvous_world_of_one()


def test_rendezvous_env_slurm_derives_master(clean_env):
    port = free_port()
    clean_env.setenv("SLURM_PROCID", "0")
    clean_env.setenv("SLURM_NTASKS", "1")
    clean_env.setenv("SLURM_JOB_NODELIST", "127.0.0.1")  # a host name SLURM would list
    clean_env.setattr(launch_env, "slurm_default_port", lambda job_id: port)
    clean_env.setenv("SLURM_JOB_ID", "77")
    _rendezvous_world_of_one()


def test_rendezvous_env_errors_name_the_variable(clean_env):
    clean_env.setenv("PMI_RANK", "0")
    clean_env.setenv("PMI_SIZE", "1")
    with pytest.raises(ValueError, match="env:// rendezvous: environment variable MASTER_ADDR"):
        next(dist.rendezvous("env://"))
    clean_env.setenv("MASTER_ADDR", "127.0.0.1")
    clean_env.setenv("MASTER_PORT", "http")
    with pytest.raises(ValueError, match="MASTER_PORT is not an integer"):
        next(dist.rendezvous("env://"))
    clean_env.delenv("PMI_RANK")
    with pytest.raises(ValueError, match="RANK expected, but not set"):
        next(dist.rendezvous("env://"))
