"""Tests for ``FileStore``: the Store API, blocking and timeouts, several handles and processes
sharing one file, reference counting and cleanup, and recovery from a torn log tail."""

from __future__ import annotations

import gc
import multiprocessing
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest

from pyc10d.core.errors import DistStoreError, QueueEmptyError
from pyc10d.store import file_store as file_store_module
from pyc10d.store.file_store import FileStore

PROCESS_TIMEOUT = 60  # seconds, for the tests that use worker processes
NUM_WORKERS = 4


@pytest.fixture
def path(tmp_path: Path) -> str:
    """A fresh store path in a temporary directory."""
    return str(tmp_path / "store")


@pytest.fixture
def store(path: str) -> Iterator[FileStore]:
    """An open FileStore (world_size unknown) closed after the test."""
    with FileStore(path) as s:
        yield s


@pytest.fixture(scope="module")
def pool() -> Iterator[ProcessPoolExecutor]:
    """Spawned worker processes, started once and shared by the multi-process tests."""
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=NUM_WORKERS, mp_context=ctx) as executor:
        yield executor


def results(futures: list[Future]) -> list:
    """Wait for every future (bounded), re-raising a worker's exception."""
    return [f.result(timeout=PROCESS_TIMEOUT) for f in futures]


# -- worker functions (top level so that spawned processes can import them) -------------------
def worker_add(path: str, times: int) -> int:
    """Add 1 to "counter" ``times`` times; return the last sum seen."""
    with FileStore(path) as s:
        last = 0
        for _ in range(times):
            last = s.add("counter", 1)
        return last


def worker_compare_set(path: str, rank: int, world: int) -> tuple[bytes, bytes]:
    """After a barrier, try to claim "winner"; return (desired, what compare_set returned)."""
    with FileStore(path) as s:
        s.barrier("start", world, timedelta(seconds=30))
        desired = f"rank{rank}".encode()
        return desired, s.compare_set("winner", b"", desired)


def worker_append(path: str, rank: int, times: int) -> None:
    """Append ``times`` tokens naming ``rank`` to "log"."""
    with FileStore(path) as s:
        for i in range(times):
            s.append("log", f"<{rank}:{i}>")


def worker_waiter(path: str) -> bytes:
    """Announce readiness, then wait for "data" set by another process."""
    with FileStore(path) as s:
        s.set("ready", b"1")
        s.wait(["data"], timedelta(seconds=30))
        return s.get("data")


def worker_setter(path: str) -> None:
    """Wait for the waiter to be ready, then set "data"."""
    with FileStore(path) as s:
        s.wait(["ready"], timedelta(seconds=30))
        s.set("data", b"payload")


def worker_queue_consumer(path: str, count: int) -> list[bytes]:
    """Pop ``count`` items from queue "q", blocking for each."""
    with FileStore(path) as s:
        s.set_timeout(timedelta(seconds=30))
        return [s.queue_pop("q") for _ in range(count)]


def worker_group_member(path: str, world: int) -> None:
    """Join a group of ``world`` users, meet the others at a barrier, then close."""
    s = FileStore(path, world)
    s.barrier("members", world, timedelta(seconds=30))
    s.close()


# -- basic operations -------------------------------------------------------------------------
def test_set_get_str_and_bytes(store: FileStore) -> None:
    store.set("a", "text")
    store.set("b", b"\x00\xffraw")
    store.set("c", bytearray(b"ba"))
    store.set("a", "overwritten")
    assert store.get("a") == b"overwritten"
    assert store.get("b") == b"\x00\xffraw"
    assert store.get("c") == b"ba"
    store.set("empty", b"")
    assert store.get("empty") == b""


def test_path_and_world_size_attributes(path: str) -> None:
    with FileStore(path, 3) as s:
        assert s.path == path
        assert s.world_size == 3
        assert "FileStore" in repr(s)
        assert s.has_extended_api()


def test_accepts_pathlike_and_existing_empty_file(tmp_path: Path) -> None:
    target = tmp_path / "precreated"
    target.touch()
    with FileStore(target) as s:
        s.set("k", "v")
        assert s.get("k") == b"v"


def test_add(store: FileStore) -> None:
    assert store.add("n", 5) == 5
    assert store.add("n", -2) == 3
    assert store.add("n", 0) == 3
    assert store.get("n") == b"3"
    store.set("m", "10")
    assert store.add("m", 1) == 11


def test_add_on_non_integer_value_names_key(store: FileStore) -> None:
    store.set("word", "hello")
    with pytest.raises(ValueError, match="word"):
        store.add("word", 1)
    assert store.get("word") == b"hello"


def test_compare_set_semantics(store: FileStore) -> None:
    # Unset key and empty expected: sets the key.
    assert store.compare_set("k", "", "first") == b"first"
    assert store.get("k") == b"first"
    # Mismatch: returns the current value, leaves it.
    assert store.compare_set("k", "wrong", "second") == b"first"
    assert store.get("k") == b"first"
    # Match: swaps.
    assert store.compare_set("k", "first", "second") == b"second"
    assert store.get("k") == b"second"
    # Unset key and non-empty expected: returns expected, stays unset.
    assert store.compare_set("unset", "expected", "desired") == b"expected"
    assert not store.check(["unset"])
    # Unset key, empty expected and empty desired: the key now exists, empty.
    assert store.compare_set("blank", b"", b"") == b""
    assert store.check(["blank"])


def test_compare_set_seen_by_other_handle(path: str) -> None:
    with FileStore(path) as a, FileStore(path) as b:
        assert a.compare_set("k", "", "x") == b"x"
        assert b.compare_set("k", "", "y") == b"x"
        assert b.compare_set("k", "x", "y") == b"y"
        assert a.get("k") == b"y"


def test_append(store: FileStore) -> None:
    store.append("log", "a")
    store.append("log", b"b")
    store.append("log", "c")
    assert store.get("log") == b"abc"
    store.set("log", "x")
    store.append("log", "y")
    assert store.get("log") == b"xy"


def test_check(store: FileStore) -> None:
    assert store.check([])
    assert not store.check(["a"])
    store.set("a", "1")
    assert store.check(["a"])
    assert not store.check(["a", "b"])
    store.set("b", "2")
    assert store.check(["a", "b"])


def test_num_keys_delete_key_list_keys(store: FileStore) -> None:
    assert store.num_keys() == 0
    assert store.list_keys() == []
    store.set("a", "1")
    store.add("b", 1)
    store.set("c", "3")
    assert store.num_keys() == 3
    assert sorted(store.list_keys()) == ["a", "b", "c"]
    assert store.delete_key("b") is True
    assert store.delete_key("b") is False
    assert store.delete_key("never") is False
    assert store.num_keys() == 2
    assert sorted(store.list_keys()) == ["a", "c"]
    assert not store.check(["b"])
    store.set("b", "again")
    assert store.num_keys() == 3


def test_bookkeeping_keys_hidden(path: str) -> None:
    with FileStore(path, 4) as a, FileStore(path, 4) as b:
        a.set("user", "1")
        assert b.num_keys() == 1
        assert b.list_keys() == ["user"]


def test_multi_set_multi_get(store: FileStore) -> None:
    store.multi_set(["x", "y", "z"], ["1", b"2", "3"])
    assert store.multi_get(["z", "x", "y"]) == [b"3", b"1", b"2"]
    assert store.multi_get([]) == []
    with pytest.raises(ValueError):
        store.multi_set(["a", "b"], ["1"])


def test_queue(store: FileStore) -> None:
    assert store.queue_len("q") == 0
    store.queue_push("q", "one")
    store.queue_push("q", b"two")
    assert store.queue_len("q") == 2
    assert store.queue_pop("q") == b"one"
    assert store.queue_pop("q", block=False) == b"two"
    assert store.queue_len("q") == 0
    with pytest.raises(QueueEmptyError):
        store.queue_pop("q", block=False)
    store.set_timeout(timedelta(milliseconds=100))
    with pytest.raises(DistStoreError, match="q"):
        store.queue_pop("q")


def test_queue_shared_between_handles(path: str) -> None:
    with FileStore(path) as a, FileStore(path) as b:
        a.queue_push("q", "1")
        a.queue_push("q", "2")
        assert b.queue_pop("q") == b"1"
        assert a.queue_len("q") == 1
        assert a.queue_pop("q") == b"2"
        assert b.queue_len("q") == 0


def test_barrier_single_member(store: FileStore) -> None:
    store.barrier("b", 1)


# -- timeouts ---------------------------------------------------------------------------------
def test_timeout_property(store: FileStore) -> None:
    assert store.timeout == timedelta(seconds=300)
    store.set_timeout(timedelta(seconds=5))
    assert store.timeout == timedelta(seconds=5)
    store.set_timeout(2)
    assert store.timeout == timedelta(seconds=2)


def test_wait_timeout_raises_in_time(store: FileStore) -> None:
    start = time.monotonic()
    with pytest.raises(DistStoreError, match="missing_key") as info:
        store.wait(["missing_key"], timedelta(milliseconds=200))
    elapsed = time.monotonic() - start
    assert 0.19 <= elapsed < 2.0
    assert "timed out" in str(info.value)


def test_wait_uses_store_timeout_and_names_missing_keys(store: FileStore) -> None:
    store.set("present", "1")
    store.set_timeout(timedelta(milliseconds=150))
    with pytest.raises(DistStoreError, match="absent"):
        store.wait(["present", "absent"])
    store.wait(["present"])


def test_get_timeout_raises_in_time(store: FileStore) -> None:
    store.set_timeout(timedelta(milliseconds=200))
    start = time.monotonic()
    with pytest.raises(DistStoreError, match="nothing_here"):
        store.get("nothing_here")
    assert 0.19 <= time.monotonic() - start < 2.0


def test_multi_get_timeout(store: FileStore) -> None:
    store.set("a", "1")
    store.set_timeout(timedelta(milliseconds=100))
    with pytest.raises(DistStoreError, match="b"):
        store.multi_get(["a", "b"])


def test_get_waits_for_key_set_by_thread(path: str) -> None:
    with FileStore(path) as reader, FileStore(path) as writer:
        reader.set_timeout(timedelta(seconds=10))
        got: list[bytes] = []
        thread = threading.Thread(target=lambda: got.append(reader.get("later")))
        thread.start()
        writer.set("later", "arrived")
        thread.join(10)
        assert got == [b"arrived"]


# -- validation -------------------------------------------------------------------------------
def test_validation_errors(store: FileStore) -> None:
    with pytest.raises(TypeError):
        store.set(1, "v")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        store.set("k", 5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        store.get(b"k")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        store.wait("k")  # a bare string is not a list of keys
    with pytest.raises(TypeError):
        store.check([1])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        store.append("k", 1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        store.set_timeout(timedelta(seconds=-1))
    with pytest.raises(ValueError):
        store.wait(["k"], timedelta(seconds=-1))
    with pytest.raises(TypeError):
        FileStore(store.path, "2")  # type: ignore[arg-type]


def test_missing_parent_directory(tmp_path: Path) -> None:
    with pytest.raises(DistStoreError, match="cannot open"):
        FileStore(str(tmp_path / "no_such_dir" / "store"))


def test_foreign_file_rejected(path: str) -> None:
    Path(path).write_bytes(b"this is definitely not a store log file")
    with pytest.raises(DistStoreError, match="not a pyc10d FileStore"):
        FileStore(path)


# -- several handles in one process -----------------------------------------------------------
def test_two_handles_see_each_other(path: str) -> None:
    with FileStore(path) as a, FileStore(path) as b:
        a.set("from_a", "1")
        b.set("from_b", "2")
        assert b.get("from_a") == b"1"
        assert a.get("from_b") == b"2"
        assert a.add("n", 1) == 1
        assert b.add("n", 1) == 2
        assert b.delete_key("from_a")
        assert not a.check(["from_a"])
        assert a.num_keys() == b.num_keys() == 2


def test_clone_shares_data_and_is_uncounted(path: str) -> None:
    original = FileStore(path, 1)
    clone = original.clone()
    assert clone.path == path
    clone.set("k", "v")
    assert original.get("k") == b"v"
    clone.close()
    assert os.path.exists(path)  # closing a clone removes nothing
    original.close()
    assert not os.path.exists(path)


def test_threads_sharing_one_handle_and_clones(store: FileStore) -> None:
    per_thread = 200

    def hammer(s: FileStore) -> None:
        for _ in range(per_thread):
            s.add("n", 1)

    clones = [store.clone() for _ in range(2)]
    threads = [threading.Thread(target=hammer, args=(s,)) for s in [store, store, *clones]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert store.get("n") == str(4 * per_thread).encode()
    for c in clones:
        c.close()


# -- lifetime and reference counting ----------------------------------------------------------
def test_close_idempotent_and_operations_after_close(path: str) -> None:
    s = FileStore(path)
    s.set("k", "v")
    assert not s.closed
    s.close()
    s.close()
    assert s.closed
    for call in (
        lambda: s.get("k"),
        lambda: s.set("k", "v"),
        lambda: s.add("n", 1),
        lambda: s.check(["k"]),
        lambda: s.num_keys(),
        lambda: s.clone(),
    ):
        with pytest.raises(DistStoreError, match="closed"):
            call()


def test_file_removed_after_world_size_users_close(path: str) -> None:
    a, b = FileStore(path, 2), FileStore(path, 2)
    a.set("k", "v")
    a.close()
    assert os.path.exists(path)
    assert b.get("k") == b"v"
    b.close()
    assert not os.path.exists(path)


def test_file_kept_with_unknown_world_size(path: str) -> None:
    with FileStore(path) as s:
        s.set("k", "v")
    assert os.path.exists(path)
    with FileStore(path) as s:
        assert s.get("k") == b"v"


def test_new_group_after_removal_starts_fresh(path: str) -> None:
    with FileStore(path, 1) as s:
        s.set("old", "1")
    assert not os.path.exists(path)
    with FileStore(path, 1) as s:
        assert s.num_keys() == 0
        assert not s.check(["old"])


def _close_in_order(stores: list[FileStore], order: list[int], path: str) -> list[bool]:
    """Close ``stores`` in ``order``; whether the file still exists after each close."""
    exists = []
    for index in order:
        stores[index].close()
        exists.append(os.path.exists(path))
    return exists


@pytest.mark.parametrize("order", [[0, 1, 2], [2, 1, 0], [1, 2, 0]])
def test_more_users_than_world_size(path: str, order: list[int]) -> None:
    # torch: world_size does not cap the openers; the file goes when every registered user has
    # closed (and at least world_size have), whatever the order
    stores = [FileStore(path, 2) for _ in range(3)]
    stores[0].set("k", "v")
    assert stores[2].get("k") == b"v"
    assert _close_in_order(stores, order, path) == [True, True, False]


def test_stale_count_from_crashed_run_is_joined(path: str) -> None:
    # a user that died without closing stays counted (as in torch): a new group of world_size
    # users still opens the file, sees the old keys, and leaves the file behind
    crashed = FileStore(path, 2)
    crashed.set("old", "1")
    crashed._finalizer.detach()  # never counted as finished, like a process killed mid-run
    os.close(crashed._log.fd)
    crashed._log.fd = -1
    a, b = FileStore(path, 2), FileStore(path, 2)
    assert a.get("old") == b"1"
    assert _close_in_order([a, b], [0, 1], path) == [True, True]


@pytest.mark.parametrize(("world_size", "expected"), [(-1, [True, True]), (0, [True, False])])
def test_unknown_and_zero_world_size(path: str, world_size: int, expected: list[bool]) -> None:
    # torch: a negative world_size never removes the file; 0 removes it when the count drops to 0
    stores = [FileStore(path, world_size) for _ in range(2)]
    assert _close_in_order(stores, [0, 1], path) == expected


def test_garbage_collection_closes(path: str) -> None:
    s = FileStore(path, 1)
    s.set("k", "v")
    del s
    gc.collect()
    assert not os.path.exists(path)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.timeout(PROCESS_TIMEOUT)
def test_forked_child_reopens_and_is_uncounted(path: str) -> None:
    s = FileStore(path, 1)
    s.add("n", 1)
    pid = os.fork()
    if pid == 0:  # child: use the inherited handle, then leave without cleanup
        code = 1
        try:
            code = 0 if s.add("n", 1) == 2 else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert s.add("n", 1) == 3
    s.close()
    assert not os.path.exists(path)


# -- torn log tail ----------------------------------------------------------------------------
def test_torn_tail_ignored_then_truncated(path: str) -> None:
    with FileStore(path) as s:
        s.set("good", "1")
    with open(path, "ab") as f:  # a writer that died mid-record
        f.write(file_store_module._HEADER.pack(1, 4, 100) + b"torn")
    with FileStore(path) as s:
        assert s.get("good") == b"1"
        assert s.num_keys() == 1
        s.set("after", "2")
    with FileStore(path) as s:
        assert sorted(s.list_keys()) == ["after", "good"]
        assert s.get("after") == b"2"


# -- several processes ------------------------------------------------------------------------
@pytest.mark.timeout(PROCESS_TIMEOUT)
def test_processes_hammer_add(path: str, pool: ProcessPoolExecutor) -> None:
    times = 250
    with FileStore(path) as s:
        futures = [pool.submit(worker_add, path, times) for _ in range(NUM_WORKERS)]
        lasts = results(futures)
        assert s.get("counter") == str(NUM_WORKERS * times).encode()
        assert max(lasts) == NUM_WORKERS * times


@pytest.mark.timeout(PROCESS_TIMEOUT)
def test_processes_compare_set_one_winner(path: str, pool: ProcessPoolExecutor) -> None:
    futures = [pool.submit(worker_compare_set, path, r, NUM_WORKERS) for r in range(NUM_WORKERS)]
    outcomes = results(futures)
    winners = [desired for desired, got in outcomes if got == desired]
    assert len(winners) == 1
    assert all(got == winners[0] for _, got in outcomes)
    with FileStore(path) as s:
        assert s.get("winner") == winners[0]


@pytest.mark.timeout(PROCESS_TIMEOUT)
def test_processes_append_lose_nothing(path: str, pool: ProcessPoolExecutor) -> None:
    times = 100
    results([pool.submit(worker_append, path, r, times) for r in range(NUM_WORKERS)])
    with FileStore(path) as s:
        log = s.get("log").decode()
    tokens = log.strip("<>").split("><")
    assert sorted(tokens) == sorted(f"{r}:{i}" for r in range(NUM_WORKERS) for i in range(times))
    for r in range(NUM_WORKERS):  # each process's own appends stay in order
        mine = [int(t.split(":")[1]) for t in tokens if t.startswith(f"{r}:")]
        assert mine == sorted(mine)


@pytest.mark.timeout(PROCESS_TIMEOUT)
def test_cross_process_wait(path: str, pool: ProcessPoolExecutor) -> None:
    waiter = pool.submit(worker_waiter, path)
    setter = pool.submit(worker_setter, path)
    assert results([waiter, setter]) == [b"payload", None]


@pytest.mark.timeout(PROCESS_TIMEOUT)
def test_cross_process_queue(path: str, pool: ProcessPoolExecutor) -> None:
    consumer = pool.submit(worker_queue_consumer, path, 3)
    with FileStore(path) as s:
        for item in ("a", "b", "c"):
            s.queue_push("q", item)
        assert consumer.result(timeout=PROCESS_TIMEOUT) == [b"a", b"b", b"c"]
        assert s.queue_len("q") == 0


@pytest.mark.timeout(PROCESS_TIMEOUT)
def test_processes_group_removes_file(path: str, pool: ProcessPoolExecutor) -> None:
    world = 3
    results([pool.submit(worker_group_member, path, world) for _ in range(world)])
    assert not os.path.exists(path)
