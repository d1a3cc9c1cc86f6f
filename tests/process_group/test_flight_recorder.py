"""The flight recorder: what each operation records, the dumps, and torch's analyzer reading them.

torch's ``ProcessGroupGlooFRTest`` (test_short_json, test_short_pickle) dumps a short trace and
checks its fields; here the same, plus the ring's bounds, subgroups, point-to-point names, the
automatic dump on a timeout or a lost peer, and the end-to-end case the recorder exists for: a
3-rank job where rank 2 skipped an allreduce, analyzed by ``python -m
torch.distributed.flight_recorder.fr_trace``, which must name the collective and rank 2.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import subprocess
import sys
import threading
import weakref
from datetime import timedelta

import pytest
import torch

import pyc10d as dist
from pyc10d.api import flight_recorder as fr
from pyc10d.core.errors import DistBackendError, TransportTimeout
from pyc10d.process_group import ProcessGroup, Work
from pyc10d.process_group import flight_recorder as recorder_mod
from pyc10d.process_group.engine import Engine
from pyc10d.testing import spawn, world_sizes

TIMEOUT = 120
ENTRY_KEYS = {
    "record_id",
    "pg_id",
    "process_group",
    "thread_name",
    "thread_id",
    "collective_seq_id",
    "p2p_seq_id",
    "op_id",
    "profiling_name",
    "time_created_ns",
    "input_sizes",
    "input_dtypes",
    "output_sizes",
    "output_dtypes",
    "state",
    "time_discovered_started_ns",
    "time_discovered_completed_ns",
    "retired",
    "timeout_ms",
    "is_p2p",
}


@pytest.fixture
def recorder():
    """A fresh recorder of 8 entries for this test; the environment's afterwards."""
    yield recorder_mod.configure(8)
    recorder_mod.configure()


# -- in this process: the ring, the entry life cycle, the formats -------------------------------
def test_ring_keeps_the_last_entries_in_order(recorder):
    pg = ProcessGroup(0, 1)  # a bare group: identity only
    for seq in range(1, 13):
        recorder.record(pg, "allreduce", seq, None, [[torch.ones(2)]], timedelta(seconds=5))
    kept = recorder.entries()
    assert [e.record_id for e in kept] == list(range(4, 12))
    assert [e.collective_seq_id for e in kept] == list(range(5, 13))
    assert [e.op_id for e in kept] == list(range(5, 13))
    dump = pickle.loads(fr.dump())
    assert [e["record_id"] for e in dump["entries"]] == list(range(4, 12))
    assert dump["entries"][0]["timeout_ms"] == 5000


def test_entry_life_cycle_and_dtypes(recorder):
    pg = ProcessGroup(0, 1)
    ok = Work("allreduce", 1, [[torch.ones(3, 4, dtype=torch.float64)]], group=pg)
    failed = Work("broadcast", 2, [[torch.ones(2, dtype=torch.int64)]], group=pg)
    pending = Work("allgather", 3, [[torch.ones(5)]], group=pg, inputs=[torch.ones(5)])
    ok._start()
    ok._complete(None)
    failed._start()
    failed._fail(DistBackendError("shut down"))  # not a timeout: no dump
    first, second, third = pickle.loads(fr.dump())["entries"]
    assert first["state"] == "completed" and first["retired"]
    assert first["time_discovered_started_ns"] <= first["time_discovered_completed_ns"]
    assert first["duration_ms"] >= 0
    assert first["input_sizes"] == first["output_sizes"] == [[3, 4]]
    assert first["input_dtypes"] == ["Double"]
    assert second["state"] == "started" and second["retired"]  # failed: retired, not completed
    assert second["time_discovered_completed_ns"] is None and "duration_ms" not in second
    assert second["input_dtypes"] == ["Long"]
    assert third["state"] == "scheduled" and not third["retired"]
    assert third["output_sizes"] == [[1, 5]]  # one rank's list, stacked as torch records it
    active = pickle.loads(fr.dump(only_active=True))["entries"]
    assert [e["profiling_name"] for e in active] == ["gloo:broadcast", "gloo:all_gather"]
    assert not pending.is_completed()


def test_engine_marks_started(recorder):
    engine = Engine(1, "fr-test")
    try:
        work = Work("allreduce", 1, [[torch.ones(1)]], group=ProcessGroup(0, 1))
        engine.submit(work, lambda: None).wait()
    finally:
        engine.shutdown()
    entry = pickle.loads(fr.dump())["entries"][0]
    assert entry["state"] == "completed"
    started = entry["time_discovered_started_ns"]
    assert started is not None
    assert entry["time_created_ns"] <= started <= entry["time_discovered_completed_ns"]


def test_off_records_nothing():
    try:
        fr.reset(0)
        assert not fr.is_enabled() and fr.buffer_size() == 0
        work = Work("allreduce", 1, [[torch.ones(1)]], group=ProcessGroup(0, 1))
        assert work._fr_entry is None
        assert pickle.loads(fr.dump())["entries"] == []
        assert json.loads(fr.dump_json())["entries"] == []
        assert fr.dump_to_file(prefix="/nonexistent/never_") is None
    finally:
        recorder_mod.configure()


def test_buffer_size_from_env(monkeypatch):
    monkeypatch.delenv("TORCH_FR_BUFFER_SIZE", raising=False)
    monkeypatch.delenv("TORCH_NCCL_TRACE_BUFFER_SIZE", raising=False)
    assert recorder_mod.buffer_size_from_env() == 2000  # torch's default for Gloo
    monkeypatch.setenv("TORCH_NCCL_TRACE_BUFFER_SIZE", "7")
    assert recorder_mod.buffer_size_from_env() == 7
    monkeypatch.setenv("TORCH_FR_BUFFER_SIZE", "0")
    assert recorder_mod.buffer_size_from_env() == 0
    monkeypatch.setenv("TORCH_FR_BUFFER_SIZE", "many")
    with pytest.raises(ValueError, match="TORCH_FR_BUFFER_SIZE"):
        recorder_mod.buffer_size_from_env()


def test_dump_prefix(monkeypatch, tmp_path):
    monkeypatch.delenv("TORCH_FR_DUMP_TEMP_FILE", raising=False)
    monkeypatch.delenv("TORCH_NCCL_DEBUG_INFO_TEMP_FILE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert recorder_mod.dump_prefix() == str(tmp_path / "torch" / "comm_lib_trace_rank_")
    monkeypatch.setenv("TORCH_FR_DUMP_TEMP_FILE", str(tmp_path / "trace_"))
    assert recorder_mod.dump_prefix() == str(tmp_path / "trace_")


def test_dtype_names():
    assert recorder_mod.dtype_name(torch.float32) == "Float"
    assert recorder_mod.dtype_name(torch.bfloat16) == "BFloat16"
    assert recorder_mod.dtype_name(torch.uint16) == "UInt16"
    assert recorder_mod.dtype_name(torch.float8_e4m3fn) == "Float8_e4m3fn"


def test_threads_record_distinct_ids():
    """Recording takes no lock: concurrent threads still get distinct, gap-free ids."""
    recorder = recorder_mod.FlightRecorder(256)
    pg = ProcessGroup(0, 1)

    def issue():
        for _ in range(50):
            recorder.record(pg, "send", -1, None, [[torch.ones(1)]], peer=0)

    threads = [threading.Thread(target=issue) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    kept = recorder.entries()
    assert [e.record_id for e in kept] == list(range(200))
    assert sorted(e.p2p_seq_id for e in kept) == list(range(1, 201))
    assert sorted(e.op_id for e in kept) == list(range(1, 201))


def test_sizes_are_shared_and_tensors_not_kept(recorder):
    """Entries with the same sizes and dtypes share one description; no tensor is kept."""
    pg = ProcessGroup(0, 1)
    first = torch.ones(2, 3)
    alive = weakref.ref(first)
    one = recorder.record(pg, "allreduce", 1, None, [[first]])
    two = recorder.record(pg, "allreduce", 2, None, [[torch.zeros(2, 3)]])
    other = recorder.record(pg, "allreduce", 3, None, [[torch.zeros(2, 3, dtype=torch.int32)]])
    pair = recorder.record(pg, "allreduce_coalesced", 4, None, [[torch.ones(1), torch.ones(4)]])
    again = recorder.record(pg, "allreduce_coalesced", 5, None, [[torch.ones(1), torch.ones(4)]])
    assert one.outputs is two.outputs and one.outputs is not other.outputs
    assert pair.outputs is again.outputs
    del first
    assert alive() is None
    entries = pickle.loads(fr.dump())["entries"]
    assert [e["output_sizes"] for e in entries] == [[[2, 3]]] * 3 + [[[1], [4]]] * 2
    assert [e["input_dtypes"] for e in entries] == [["Float"], ["Float"], ["Int"]] + [
        ["Float", "Float"]
    ] * 2


def test_shared_sizes_are_bounded(recorder, monkeypatch):
    """A job whose shapes never repeat does not grow the shared table without bound."""
    monkeypatch.setattr(recorder_mod, "SHARED_LIMIT", 3)
    pg = ProcessGroup(0, 1)
    for n in range(1, 11):
        recorder.record(pg, "allreduce", n, None, [[torch.ones(n)]])
    assert len(recorder._one) <= 3
    sizes = [e["output_sizes"] for e in pickle.loads(fr.dump())["entries"]]
    assert sizes == [[[n]] for n in range(3, 11)]


class _SymbolicSize(list):
    """A size that cannot be hashed, as symbolic (SymInt) sizes cannot."""

    __hash__ = None  # type: ignore[assignment]


class _SymbolicTensor:
    """Just what the recorder reads of a tensor: its size and dtype."""

    shape = _SymbolicSize([3])
    dtype = torch.float16


def test_unhashable_sizes_recorded_unshared(recorder):
    entry = recorder.record(ProcessGroup(0, 1), "allreduce", 1, None, [[_SymbolicTensor()]])
    assert entry.outputs[0][0] is _SymbolicTensor.shape
    dumped = pickle.loads(fr.dump())["entries"][0]
    assert dumped["output_sizes"] == [[3]] and dumped["output_dtypes"] == ["Half"]


def test_p2p_leaves_collective_status(recorder):
    """Sends and receives move their own counters, not the group's collective status."""
    pg = ProcessGroup(0, 1)
    coll = recorder.record(pg, "allreduce", 1, None, [[torch.ones(1)]])
    coll.start()
    coll.complete()
    send = recorder.record(pg, "send", -1, None, [[torch.ones(1)]], peer=0)
    send.start()
    send.complete()
    status = pickle.loads(fr.dump())["pg_status"]["0"]
    assert status == {
        "last_enqueued_collective": 1,
        "last_started_collective": 1,
        "last_completed_collective": 1,
    }
    assert (send.collective_seq_id, send.p2p_seq_id, send.op_id) == (1, 1, 2)
    assert send.profiling_name == "gloo:send 0->0" and send.state == "completed"


def _record_here(recorder, pg):
    return recorder.record(pg, "barrier", 1, None, [])


def test_stacks_symbolized_when_dumped():
    """The stack is the caller's (the recorder's own frames left out), or none when off."""
    pg = ProcessGroup(0, 1)
    with_stacks = recorder_mod.FlightRecorder(4)
    _record_here(with_stacks, pg)
    frames = with_stacks.dump_dict()["entries"][0]["frames"]
    assert frames[0]["name"] == "_record_here" and frames[0]["filename"] == __file__
    assert frames[1]["name"] == "test_stacks_symbolized_when_dumped"
    without = recorder_mod.FlightRecorder(4, capture_stacks=False)
    _record_here(without, pg)
    entry = without.dump_dict()["entries"][0]
    assert entry["frames"] == [] and entry["input_sizes"] == entry["output_sizes"] == []


# -- across processes ----------------------------------------------------------------------------
def short_trace(ctx):
    """torch's test_short_pickle / test_short_json, plus a subgroup and a send/recv."""
    dist.init_process_group(store=ctx.store, rank=ctx.rank, world_size=ctx.world_size)
    rank, size = ctx.rank, ctx.world_size
    t = torch.full((3, 4), float(rank))
    dist.all_reduce(t)
    pair = dist.new_group([0, size - 1])
    if rank in (0, size - 1):
        dist.broadcast(torch.ones(2, dtype=torch.float64), src=0, group=pair)
        if rank == 0:
            dist.send(torch.ones(5), dst=size - 1)
        else:
            dist.recv(torch.zeros(5), src=0)
    outputs = [torch.zeros(2) for _ in range(size)]
    dist.all_gather(outputs, torch.ones(2))
    dumped = pickle.loads(fr.dump())
    as_json = json.loads(fr.dump_json())
    no_stacks = pickle.loads(fr.dump(include_stack_traces=False))
    no_entries = pickle.loads(fr.dump(include_collectives=False))
    dist.destroy_process_group()
    return dumped, as_json, no_stacks, no_entries


def _check_common(dump, size):
    assert dump["version"] == "2.10"
    assert dump["pg_config"]["0"] == {
        "name": "0",
        "desc": "default_pg",
        "ranks": str(list(range(size))),
    }
    first = dump["entries"][0]
    assert set(first) >= ENTRY_KEYS
    assert first["profiling_name"] == "gloo:all_reduce"
    assert tuple(first["process_group"]) == ("0", "default_pg")
    assert first["collective_seq_id"] == 1 and first["p2p_seq_id"] == 0 and first["op_id"] == 1
    assert first["input_sizes"] == first["output_sizes"] == [[3, 4]]
    assert first["input_dtypes"] == first["output_dtypes"] == ["Float"]
    assert first["state"] == "completed" and first["retired"] and first["timeout_ms"] == 1800000
    assert first["time_created_ns"] <= first["time_discovered_completed_ns"]
    last = dump["entries"][-1]
    assert last["profiling_name"] == "gloo:all_gather"
    assert last["input_sizes"] == [[2]] and last["output_sizes"] == [[size, 2]]


@world_sizes(2, 3)
def test_short_trace(world_size):
    results = spawn(short_trace, world_size, timeout=TIMEOUT, env={"TORCH_FR_BUFFER_SIZE": "50"})
    for rank, (dumped, as_json, no_stacks, no_entries) in enumerate(results):
        _check_common(dumped, world_size)
        _check_common(as_json, world_size)
        frames = dumped["entries"][0]["frames"]
        assert frames[0]["name"] == "all_reduce" and frames[0]["filename"].endswith(
            os.path.join("api", "collectives.py")
        )
        assert any(f["name"] == "short_trace" and f["filename"] == __file__ for f in frames)
        assert "frames" not in as_json["entries"][0] and "frames" not in no_stacks["entries"][0]
        assert as_json["pg_status"]["0"]["last_completed_collective"] == "2"
        assert "entries" not in no_entries and "0" in no_entries["pg_config"]
        names = [e["profiling_name"] for e in dumped["entries"]]
        if rank in (0, world_size - 1):
            pair = dumped["pg_config"]["1"]
            assert pair == {"name": "1", "desc": "undefined", "ranks": f"[0, {world_size - 1}]"}
            p2p = dumped["entries"][2]
            last = world_size - 1  # the send and receive run on the default group
            peer = f"send 0->{last}" if rank == 0 else f"recv {last}<-0"
            assert names == ["gloo:all_reduce", "gloo:broadcast", f"gloo:{peer}", names[-1]]
            assert p2p["is_p2p"] and p2p["p2p_seq_id"] == 1 and p2p["input_sizes"] == [[5]]
            assert p2p["process_group"] == ("0", "default_pg") and p2p["collective_seq_id"] == 1
            assert dumped["entries"][1]["process_group"] == ("1", "undefined")
            assert dumped["entries"][1]["input_dtypes"] == ["Double"]
        else:
            assert names == ["gloo:all_reduce", "gloo:all_gather"]
            assert "1" not in dumped["pg_config"]


def timed_out(ctx, prefix):
    """Rank 0 waits for an allreduce rank 1 never joins: it times out and dumps by itself."""
    os.environ["TORCH_FR_DUMP_TEMP_FILE"] = prefix
    os.environ["TORCH_NCCL_DUMP_ON_TIMEOUT"] = "1"  # testing.spawn turns it off by default
    dist.init_process_group(store=ctx.store, rank=ctx.rank, world_size=ctx.world_size)
    dist.all_reduce(torch.ones(1))
    if ctx.rank == 0:
        dist.group.WORLD.set_timeout(timedelta(seconds=1))
        with pytest.raises(TransportTimeout):
            dist.all_reduce(torch.ones(4))
        ctx.store.set("rank0_failed", "1")
    else:
        ctx.store.wait(["rank0_failed"], timedelta(seconds=60))
    return os.path.exists(f"{prefix}{ctx.rank}")


def test_timeout_dumps_automatically(tmp_path):
    prefix = str(tmp_path / "trace_rank_")
    assert spawn(timed_out, 2, args=(prefix,), timeout=TIMEOUT) == [True, False]
    with open(f"{prefix}0", "rb") as file:
        dump = pickle.load(file)
    hung = dump["entries"][-1]
    assert hung["profiling_name"] == "gloo:all_reduce" and hung["collective_seq_id"] == 2
    assert hung["state"] in ("scheduled", "started")  # where it stopped: never completed
    assert hung["time_discovered_completed_ns"] is None and hung["timeout_ms"] == 1000
    assert dump["entries"][0]["state"] == "completed"
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")]  # no scratch left


def peer_lost(ctx, prefix):
    """Rank 1 leaves after one allreduce; rank 0's next one loses its peer and dumps."""
    os.environ["TORCH_FR_DUMP_TEMP_FILE"] = prefix
    os.environ["TORCH_NCCL_DUMP_ON_TIMEOUT"] = "1"  # testing.spawn turns it off by default
    dist.init_process_group(store=ctx.store, rank=ctx.rank, world_size=ctx.world_size)
    dist.all_reduce(torch.ones(1))
    if ctx.rank == 1:
        dist.destroy_process_group()  # its connections close under rank 0's next allreduce
        return False
    with pytest.raises(DistBackendError, match="rank 1"):
        dist.all_reduce(torch.ones(1))
    return os.path.exists(f"{prefix}0")


def test_lost_peer_dumps_automatically(tmp_path):
    prefix = str(tmp_path / "trace_rank_")
    assert spawn(peer_lost, 2, args=(prefix,), timeout=TIMEOUT) == [True, False]
    with open(f"{prefix}0", "rb") as file:
        entries = pickle.load(file)["entries"]
    assert entries[0]["state"] == "completed"
    assert entries[-1]["collective_seq_id"] == 2 and entries[-1]["state"] != "completed"


# -- end to end: torch's analyzer finds the rank that skipped a collective -----------------------
def skipped_allreduce(ctx, prefix):
    """Ranks 0 and 1 run a second allreduce that rank 2 skips: they time out and dump by
    themselves; rank 2 dumps on demand."""
    os.environ["TORCH_FR_DUMP_TEMP_FILE"] = prefix
    os.environ["TORCH_NCCL_DUMP_ON_TIMEOUT"] = "1"  # testing.spawn turns it off by default
    dist.init_process_group(store=ctx.store, rank=ctx.rank, world_size=ctx.world_size)
    dist.all_reduce(torch.ones(8))
    dist.broadcast(torch.ones(3), src=0)
    if ctx.rank == 2:
        fr.dump_to_file()
        ctx.store.wait(["dumped0", "dumped1"], timedelta(seconds=60))
        return
    dist.group.WORLD.set_timeout(timedelta(seconds=2))
    with pytest.raises(TransportTimeout):
        dist.all_reduce(torch.ones(8))
    assert os.path.exists(f"{prefix}{ctx.rank}")
    ctx.store.set(f"dumped{ctx.rank}", "1")


def test_torch_analyzer_names_the_missing_rank(tmp_path):
    pytest.importorskip("torch.distributed.flight_recorder.fr_trace")
    spawn(skipped_allreduce, 3, args=(str(tmp_path / "trace_rank_"),), timeout=TIMEOUT)
    assert sorted(os.listdir(tmp_path)) == ["trace_rank_0", "trace_rank_1", "trace_rank_2"]
    command = [sys.executable, "-m", "torch.distributed.flight_recorder.fr_trace", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    print(output)  # shown with -s: the analyzer's report
    assert "Not all ranks joining collective, sequence number: 3" in output
    assert "missing ranks: {2}" in output
    assert "collective: gloo:all_reduce" in output
    assert "input sizes: [[8]]" in output
    if importlib.util.find_spec("tabulate") is None:
        return  # torch's -j table needs tabulate (fr_trace raises NameError without it)
    # -j prints every rank's entries side by side: rank 2's column has one entry fewer
    listing = subprocess.run(
        [*command, "-j", "--prefix", "trace_rank_"], capture_output=True, text=True, timeout=120
    )
    table = listing.stdout + listing.stderr
    assert listing.returncode == 0, table
    print(table)
    assert "Rank 0" in table and "Rank 2" in table and "all_reduce" in table
