"""The Store API, with the same assertions on every store (Hash, File, TCP, Prefix)."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest

import pyc10d
from pyc10d import DistStoreError, FileStore, HashStore, PrefixStore, QueueEmptyError, TCPStore

SHORT = timedelta(milliseconds=200)


def _tcp_master(tmp_path):
    return TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)


def _tcp_client(tmp_path):
    master = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    client = TCPStore("127.0.0.1", master.port, is_master=False)
    client._keep_alive = master  # the server lives as long as the client under test
    return client


STORE_FACTORIES = {
    "hash": lambda tmp_path: HashStore(),
    "file": lambda tmp_path: FileStore(str(tmp_path / "store"), -1),
    "tcp_master": _tcp_master,
    "tcp_client": _tcp_client,
    "prefix_hash": lambda tmp_path: PrefixStore("pre", HashStore()),
    "prefix_tcp": lambda tmp_path: PrefixStore("a/b", _tcp_master(tmp_path)),
}


@pytest.fixture(params=list(STORE_FACTORIES))
def store(request, tmp_path):
    s = STORE_FACTORIES[request.param](tmp_path)
    s.set_timeout(timedelta(seconds=10))
    yield s
    for obj in (s, getattr(s, "underlying_store", None), getattr(s, "_keep_alive", None)):
        if hasattr(obj, "close"):
            obj.close()


def test_set_get_str_and_bytes(store):
    store.set("key", "value")
    store.set("bin", b"\x00\xff\x01")
    assert store.get("key") == b"value"
    assert store.get("bin") == b"\x00\xff\x01"
    store.set("key", "other")
    assert store.get("key") == b"other"


def test_large_value_round_trips(store):
    blob = bytes(range(256)) * 8192  # 2 MiB
    store.set("blob", blob)
    assert store.get("blob") == blob


def test_add_counts_from_zero_and_returns_total(store):
    assert store.add("counter", 5) == 5
    assert store.add("counter", -2) == 3
    assert store.get("counter") == b"3"


def test_add_on_non_integer_names_the_key(store):
    store.set("text", "abc")
    with pytest.raises(ValueError, match="text"):
        store.add("text", 1)


def test_compare_set_follows_torch(store):
    assert store.compare_set("cs", "expected", "new") == b"expected"  # unset, not empty: no-op
    assert not store.check(["cs"])
    assert store.compare_set("cs", "", "first") == b"first"  # unset + empty expected: set
    assert store.compare_set("cs", "wrong", "second") == b"first"  # mismatch: current value
    assert store.compare_set("cs", "first", "second") == b"second"
    assert store.get("cs") == b"second"


def test_check_and_delete_key(store):
    assert store.check([])
    assert not store.check(["x"])
    store.set("x", "1")
    store.set("y", "2")
    assert store.check(["x", "y"])
    assert not store.check(["x", "z"])
    assert store.delete_key("x") is True
    assert store.delete_key("x") is False
    assert not store.check(["x"])


def test_num_keys_and_list_keys(store):
    base = store.num_keys()
    store.set("a", "1")
    store.add("b", 1)
    store.compare_set("c", "", "x")
    assert store.num_keys() == base + 3
    assert {"a", "b", "c"} <= set(store.list_keys())
    store.delete_key("b")
    assert store.num_keys() == base + 2
    assert "b" not in store.list_keys()


def test_multi_set_and_multi_get(store):
    store.multi_set(["m1", "m2", "m3"], ["a", b"b", "c"])
    assert store.multi_get(["m3", "m1", "m2"]) == [b"c", b"a", b"b"]
    assert store.multi_get([]) == []
    with pytest.raises(ValueError, match="2 keys but 1 values"):
        store.multi_set(["a", "b"], ["1"])


def test_append(store):
    store.append("log", "ab")
    store.append("log", b"cd")
    assert store.get("log") == b"abcd"


def test_wait_returns_once_keys_exist(store):
    store.set("w1", "1")
    store.wait(["w1"])
    store.wait(["w1"], timedelta(seconds=1))


def test_wait_timeout_names_missing_key(store):
    store.set("present", "1")
    start = time.monotonic()
    with pytest.raises(DistStoreError, match=r"timed out.*absent'") as info:
        store.wait(["present", "absent"], SHORT)
    assert 0.15 <= time.monotonic() - start < 5
    assert isinstance(info.value, RuntimeError)


def test_get_timeout_uses_store_timeout(store):
    store.set_timeout(SHORT)
    assert store.timeout == SHORT
    start = time.monotonic()
    with pytest.raises(DistStoreError, match=r"timed out.*never'"):
        store.get("never")
    assert 0.15 <= time.monotonic() - start < 5


def test_multi_get_times_out_on_missing_key(store):
    store.set_timeout(SHORT)
    store.set("here", "1")
    with pytest.raises(DistStoreError, match="gone"):
        store.multi_get(["here", "gone"])


def test_get_wakes_when_another_thread_sets(store):
    clone = store.clone()
    ready = threading.Event()

    def setter():
        ready.wait(10)
        clone.set("late", "arrived")

    thread = threading.Thread(target=setter)
    thread.start()
    ready.set()
    assert store.get("late") == b"arrived"
    thread.join(10)


def test_queue_push_pop_len(store):
    store.queue_push("q", "one")
    store.queue_push("q", b"two")
    assert store.queue_len("q") == 2
    assert store.queue_pop("q") == b"one"
    assert store.queue_pop("q", block=False) == b"two"
    assert store.queue_len("q") == 0
    with pytest.raises(QueueEmptyError):
        store.queue_pop("q", block=False)
    store.set_timeout(SHORT)
    with pytest.raises(DistStoreError, match="timed out"):
        store.queue_pop("q")


def test_barrier_single_member(store):
    store.barrier("bar", 1)


def test_the_group_stays_usable_after_errors(store):
    with pytest.raises(TypeError):
        store.set(1, "x")
    with pytest.raises(DistStoreError):
        store.wait(["nope"], timedelta(milliseconds=50))
    store.set("fine", "yes")
    assert store.get("fine") == b"yes"


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.set(1, "x"),
        lambda s: s.get(b"key"),
        lambda s: s.add(None, 1),
        lambda s: s.wait("not-a-list"),
        lambda s: s.check([1]),
        lambda s: s.set("k", 3.5),
        lambda s: s.delete_key(2),
    ],
)
def test_bad_keys_and_values_raise_type_error(store, call):
    with pytest.raises(TypeError, match="must be"):
        call(store)


def test_negative_timeout_is_rejected(store):
    with pytest.raises(ValueError, match="non-negative"):
        store.set_timeout(timedelta(seconds=-1))
    with pytest.raises(ValueError, match="non-negative"):
        store.wait(["k"], timedelta(seconds=-1))


def test_default_timeout_is_torchs():
    assert HashStore().timeout == timedelta(seconds=300)


def test_prefix_store_namespaces_keys():
    base = HashStore()
    a, b = PrefixStore("a", base), PrefixStore("b", base)
    a.set("k", "from-a")
    b.set("k", "from-b")
    assert a.get("k") == b"from-a" and b.get("k") == b"from-b"
    assert base.get("a/k") == b"from-a"
    assert a.underlying_store is base
    nested = PrefixStore("inner", a)
    nested.set("x", "1")
    assert base.get("a/inner/x") == b"1"
    assert a.list_keys() == ["k", "inner/x"]
    with pytest.raises(TypeError):
        PrefixStore("p", object())


def test_errors_are_runtime_errors():
    for cls in (pyc10d.DistStoreError, pyc10d.DistNetworkError, pyc10d.DistBackendError):
        assert issubclass(cls, pyc10d.DistError)
        assert issubclass(cls, RuntimeError)
