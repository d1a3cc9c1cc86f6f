"""The flight recorder: the last N operations of every group of this process, for debugging hangs.

torch's c10d keeps a process-wide ring buffer (``FlightRecorder``) of the collectives and
point-to-point operations its backends ran; when a job hangs, each rank dumps its buffer and
``python -m torch.distributed.flight_recorder.fr_trace <dir>`` matches the ranks' entries to say
which collective, group and ranks disagree. This module is pyc10d's recorder, writing the same
format, so torch's analyzer reads pyc10d dumps unchanged.

As in torch:

* ``TORCH_FR_BUFFER_SIZE`` (or the older ``TORCH_NCCL_TRACE_BUFFER_SIZE``) sets the number of
  entries kept, read when the first operation is recorded; torch's default for Gloo is 2000 and
  0 turns recording off (nothing is recorded, nothing is dumped).
* Every :class:`~pyc10d.process_group.work.Work` of a group records one entry when it is created
  ("scheduled"), marks it "started" when the engine begins running it and "completed" when it
  succeeds (one that fails is only ``retired``, its state left where it stopped, as torch leaves a
  timed-out collective). An entry holds the record id, the group's id, name and description, the
  collective and p2p sequence ids, the op id, the profiling name (``"gloo:all_reduce"``,
  ``"gloo:send 0->1"``), input and output sizes and dtypes, the state and its times, the
  duration, the timeout and the Python stack of the call.
* A dump is a pickle (or JSON) of ``{"version", "pg_config", "pg_status", "comm_lib_version",
  "entries"}`` with torch's keys and version (``"2.10"``). The profiling names use the ``gloo``
  prefix: pyc10d stands in for torch's Gloo backend, and torch's analyzer accepts only the
  prefixes of torch's own backends.
* When an operation fails with a timeout or a lost peer, the recorder writes the dump of this
  process once, before the error reaches the caller, to ``<TORCH_FR_DUMP_TEMP_FILE><rank>``
  (default ``$XDG_CACHE_HOME/torch/comm_lib_trace_rank_<rank>``, ``~/.cache`` without it; the
  rank is the global one). ``TORCH_NCCL_DUMP_ON_TIMEOUT=0`` turns that off, as in torch.

Recording is on the path of every operation, so it keeps raw values and converts them only when
dumped (``benchmarks/flight_recorder_bench.py`` measures it): an entry object filled without a
lock, sizes and dtypes shared between entries that have the same ones, one ``time_ns`` per state
change, and the Python stack (torch records it by default too), caught by torch's own C++
unwinder as code objects and instruction offsets, symbolized only when dumped
(``PYC10D_FR_STACK=0`` skips it). Nothing holds on to the tensors.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import pickle
import sys
import threading
import weakref
from _thread import get_ident
from collections.abc import Sequence
from datetime import timedelta
from time import time_ns
from types import FrameType
from typing import Any

import torch

from ..core.errors import PeerFailedError, TransportTimeout

log = logging.getLogger(__name__)

BUFFER_SIZE_VARS = ("TORCH_FR_BUFFER_SIZE", "TORCH_NCCL_TRACE_BUFFER_SIZE")
"""The environment variables giving the number of entries kept, first one set wins."""

DEFAULT_BUFFER_SIZE = 2000
"""torch's default for Gloo (``TORCH_FR_BUFFER_SIZE`` unset); 0 turns recording off."""

DUMP_FILE_VARS = ("TORCH_FR_DUMP_TEMP_FILE", "TORCH_NCCL_DEBUG_INFO_TEMP_FILE")
"""The environment variables giving the dump file prefix (the rank is appended)."""

DUMP_ON_FAILURE_VAR = "TORCH_NCCL_DUMP_ON_TIMEOUT"
"""Set to 0 to stop the automatic dump when an operation times out or loses a peer."""

SHARED_LIMIT = 4096
"""The most distinct tensor descriptions (sizes and dtypes) a recorder shares at once."""

STACK_VAR = "PYC10D_FR_STACK"
"""Set to 0 to record no stacks (the largest single part of the recording cost)."""

VERSION = "2.10"
"""The dump format version torch 2.13's recorder writes (its analyzer checks ``major.minor``)."""

BACKEND = "gloo"
"""The profiling-name prefix: torch's analyzer accepts only its own backends' names."""

SCHEDULED, STARTED, COMPLETED = "scheduled", "started", "completed"

PROFILING_NAMES = {
    "allreduce": "all_reduce",
    "allreduce_coalesced": "allreduce_coalesced",
    "broadcast": "broadcast",
    "reduce": "reduce",
    "allgather": "all_gather",
    "_allgather_base": "_all_gather_base",
    "allgather_into_tensor_coalesced": "all_gather_into_tensor_coalesced",
    "allgather_coalesced": "ALLGATHER_coalesced",
    "gather": "gather",
    "scatter": "scatter",
    "reduce_scatter": "reduce_scatter",
    "_reduce_scatter_base": "_reduce_scatter_base",
    "reduce_scatter_tensor_coalesced": "reduce_scatter_tensor_coalesced",
    "alltoall_base": "all_to_all",
    "alltoall": "all_to_all",
    "barrier": "barrier",
    "send": "send",
    "recv": "recv",
}
"""pyc10d's operation names -> the names torch's recorder and analyzer use."""

P2P_OPS = frozenset({"send", "recv"})

SAME_INPUTS = frozenset({"allreduce", "allreduce_coalesced", "broadcast", "reduce", "send", "recv"})
"""Operations whose inputs are their outputs (in place): recorded as both."""

STACKED_OUTPUTS = frozenset({"allgather", "gather", "allgather_coalesced"})
STACKED_INPUTS = frozenset({"scatter", "reduce_scatter"})
"""Operations with per-rank tensor lists, recorded as one stacked size each, as torch does
(an all_gather of 2 ranks' ``[4]`` tensors has output size ``[2, 4]``)."""

DTYPE_NAMES = {
    torch.float32: "Float",
    torch.float64: "Double",
    torch.float16: "Half",
    torch.bfloat16: "BFloat16",
    torch.complex32: "ComplexHalf",
    torch.complex64: "ComplexFloat",
    torch.complex128: "ComplexDouble",
    torch.int64: "Long",
    torch.int32: "Int",
    torch.int16: "Short",
    torch.int8: "Char",
    torch.uint8: "Byte",
    torch.bool: "Bool",
}
"""torch dtypes -> c10's ScalarType names, which torch's recorder writes."""

try:  # torch's C++ stack capture (what its own recorder uses): fast, symbolized on dump
    from torch._C._profiler import gather_traceback as _gather_traceback
    from torch._C._profiler import symbolize_tracebacks as _symbolize_tracebacks
except ImportError:  # pragma: no cover - older torch: walk the Python frames
    _gather_traceback = None
    _symbolize_tracebacks = None

_INTERNAL_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
"""Frames in this package (Work, the engine, the group) are left out of dumped stacks."""


def dtype_name(dtype: torch.dtype) -> str:
    """c10's name of ``dtype`` (``"Float"``), as torch's dumps spell it."""
    name = DTYPE_NAMES.get(dtype)
    if name is None:  # the rarer ones: float8_e4m3fn -> Float8_e4m3fn, uint16 -> UInt16
        name = str(dtype).removeprefix("torch.")
        name = "U" + name[1:].capitalize() if name.startswith("uint") else name.capitalize()
    return name


def _timeout_ms(timeout: Any) -> int:
    """A timeout (timedelta or seconds; None: none) in whole milliseconds."""
    if timeout is None:
        return 0
    seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else float(timeout)
    return int(seconds * 1000)


def _stacked(item: list | tuple) -> tuple[torch.Size, torch.dtype]:
    """(size, dtype) of a non-empty per-rank list of tensors seen as one: ``[len, *shape]``."""
    first = item[0]
    return torch.Size((len(item), *first.shape)), first.dtype


def describe(value: Any, stacked: bool) -> tuple[tuple[torch.Size, torch.dtype], ...]:
    """(size, dtype) of each tensor of ``value`` (a tensor, or a list of tensors and lists).

    With ``stacked``, a nested list counts as one tensor of size ``[len, *first.shape]``.
    Only the raw sizes and dtypes are kept (no reference to the tensors); they become torch's
    lists and names when dumped. (Types are compared directly: ``isinstance(x,
    torch.Tensor)`` costs more than the rest.)
    """
    if value is None:
        return ()
    if type(value) is not list and type(value) is not tuple:
        return ((value.shape, value.dtype),)
    found = []
    for item in value:
        if type(item) is not list and type(item) is not tuple:
            found.append((item.shape, item.dtype))
        elif not item:
            continue
        elif stacked:
            found.append(_stacked(item))
        else:
            found.extend((tensor.shape, tensor.dtype) for tensor in item)
    return tuple(found)


class GroupRecord:
    """What the recorder knows about one process group: its identity and its counters.

    ``name`` is torch's group name (``"0"`` for the default group, ``"1"``, ``"2"``... for
    ``new_group``), ``desc`` its description (``"default_pg"``, else ``"undefined"`` unless one
    was set), ``ranks`` the members' global ranks. ``op_ids`` and ``p2p_ids`` count the
    group's operations and point-to-point operations (``itertools.count``: one ``next`` is
    atomic under the GIL); ``p2p_seq`` is the last p2p id given, ``enqueued``, ``started`` and
    ``completed`` the last collective sequence numbers (torch's ``pg_status``).
    """

    __slots__ = (
        "completed",
        "desc",
        "enqueued",
        "global_rank",
        "name",
        "op_ids",
        "p2p_ids",
        "p2p_seq",
        "pg_id",
        "rank",
        "ranks",
        "started",
    )

    def __init__(self, pg: Any, pg_id: int) -> None:
        options = getattr(pg, "options", None)
        self.pg_id = pg_id
        self.rank = pg.rank()
        self.ranks = list(getattr(options, "global_ranks_in_group", None) or range(pg.size()))
        self.global_rank = self.ranks[self.rank] if self.rank < len(self.ranks) else self.rank
        named = getattr(options, "group_name", "") or ""
        self.name = named or str(pg_id)
        desc = getattr(pg, "group_desc", "") or ""
        self.desc = desc or ("default_pg" if named == "0" else "undefined")
        self.op_ids = itertools.count(1)
        self.p2p_ids = itertools.count(1)
        self.p2p_seq = 0
        self.enqueued = 0
        self.started = -1
        self.completed = -1

    def config(self) -> dict[str, str]:
        """This group's ``pg_config`` entry (torch writes the ranks as a string)."""
        return {"name": self.name, "desc": self.desc, "ranks": str(self.ranks)}

    def status(self) -> dict[str, int]:
        """This group's ``pg_status`` entry: the last collective enqueued, started, completed."""
        return {
            "last_enqueued_collective": self.enqueued,
            "last_started_collective": self.started,
            "last_completed_collective": self.completed,
        }


class Entry:
    """One recorded collective; its Work moves it through scheduled, started and completed.

    It holds raw values only: the op type and peer (the profiling name is made when dumped),
    (size, dtype) pairs, the timeout as given, the thread id and the unsymbolized stack; one
    ``time_ns`` per state change, and the state follows from which times are set.
    """

    __slots__ = (
        "collective_seq_id",
        "group",
        "inputs",
        "op_id",
        "op_type",
        "outputs",
        "p2p_seq_id",
        "peer",
        "record_id",
        "retired",
        "stack",
        "thread_id",
        "time_completed_ns",
        "time_created_ns",
        "time_started_ns",
        "timeout",
    )

    is_p2p = False
    """True for a send or receive (:class:`P2PEntry`)."""

    def start(self) -> None:
        """The operation began running (torch's ``time_discovered_started_ns``)."""
        if self.time_started_ns is None:
            self.time_started_ns = time_ns()
            self.group.started = self.collective_seq_id

    def complete(self) -> None:
        """The operation succeeded."""
        self.time_completed_ns = time_ns()
        self.retired = True
        self.group.completed = self.collective_seq_id

    def retire(self) -> None:
        """The operation failed: it is over, but never completed (its state stays)."""
        self.retired = True

    @property
    def state(self) -> str:
        """The state: "scheduled", "started" or "completed", from the times set."""
        if self.time_completed_ns is not None:
            return COMPLETED
        return SCHEDULED if self.time_started_ns is None else STARTED

    @property
    def profiling_name(self) -> str:
        """torch's name of the operation: ``"gloo:all_reduce"``, ``"gloo:send 0->1"``."""
        name = f"{BACKEND}:{PROFILING_NAMES.get(self.op_type, self.op_type)}"
        if self.is_p2p:
            arrow = "->" if self.op_type == "send" else "<-"
            peer = -1 if self.peer is None else self.peer
            name = f"{name} {self.group.rank}{arrow}{peer}"
        return name

    def duration_ms(self) -> float | None:
        """Milliseconds from start (or creation, if never marked started) to completion."""
        if self.time_completed_ns is None:
            return None
        begin = self.time_started_ns or self.time_created_ns
        return (self.time_completed_ns - begin) / 1e6

    def _tensors(self) -> tuple[list, list]:
        """(inputs, outputs) as (size, dtype) pairs: in-place operations' inputs are their
        outputs; others without recorded inputs have none."""
        outputs = self.outputs
        inputs = self.inputs
        if inputs is None:
            inputs = outputs if self.op_type in SAME_INPUTS else []
        return inputs, outputs

    def to_dict(self, threads: dict[int, str], frames: list[dict] | None) -> dict[str, Any]:
        """The entry as torch writes it in a pickled dump (``frames`` only if given)."""
        group = self.group
        data: dict[str, Any] = {
            "record_id": self.record_id,
            "pg_id": group.pg_id,
            "process_group": (group.name, group.desc),
            "thread_name": threads.get(self.thread_id, ""),
            "thread_id": str(self.thread_id),
            "collective_seq_id": self.collective_seq_id,
            "p2p_seq_id": self.p2p_seq_id,
            "op_id": self.op_id,
            "profiling_name": self.profiling_name,
            "time_created_ns": self.time_created_ns,
        }
        duration = self.duration_ms()
        if duration is not None:
            data["duration_ms"] = duration
        inputs, outputs = self._tensors()
        data.update(
            input_sizes=[list(size) for size, _ in inputs],
            input_dtypes=[dtype_name(dtype) for _, dtype in inputs],
            output_sizes=[list(size) for size, _ in outputs],
            output_dtypes=[dtype_name(dtype) for _, dtype in outputs],
            state=self.state,
            time_discovered_started_ns=self.time_started_ns,
            time_discovered_completed_ns=self.time_completed_ns,
            retired=self.retired,
            timeout_ms=_timeout_ms(self.timeout),
            is_p2p=self.is_p2p,
        )
        if frames is not None:
            data["frames"] = frames
        return data


class P2PEntry(Entry):
    """One recorded send or receive: the group's collective status is not its to move."""

    __slots__ = ()

    is_p2p = True

    def start(self) -> None:
        """The operation began running."""
        if self.time_started_ns is None:
            self.time_started_ns = time_ns()

    def complete(self) -> None:
        """The operation succeeded."""
        self.time_completed_ns = time_ns()
        self.retired = True


def _capture_stack(python: bool = True, script: bool = False, cpp: bool = False) -> Any:
    """The caller's Python stack as (code, line) pairs, where torch's C++ capture is missing
    (the arguments are its, ignored)."""
    frame: FrameType | None = sys._getframe(1)
    found = []
    while frame is not None and len(found) < 64:
        found.append((frame.f_code, frame.f_lineno))
        frame = frame.f_back
    return found


def _symbolize(stacks: Sequence[Any]) -> list[list[dict[str, Any]]]:
    """Frames (``{"name", "filename", "line"}``, innermost first, as torch writes them) of each
    captured stack, without the recorder's and the process group's own frames."""
    if not stacks:
        return []
    if _symbolize_tracebacks is not None and not isinstance(stacks[0], list):
        symbolized = _symbolize_tracebacks(list(stacks))
    else:
        symbolized = [
            [{"name": c.co_name, "filename": c.co_filename, "line": line} for c, line in stack]
            for stack in stacks
        ]
    result = []
    for frames in symbolized:
        first = 0
        while first < len(frames) and frames[first]["filename"].startswith(_INTERNAL_DIR):
            first += 1
        result.append(list(frames[first:]))
    return result


def _share(table: dict, key: Any, value: tuple) -> tuple:
    """Add ``key -> value`` to ``table`` (emptied first if full) and return ``value``."""
    if len(table) >= SHARED_LIMIT:
        table.clear()
    table[key] = value
    return value


class FlightRecorder:
    """A ring buffer of the last ``capacity`` operations of every group of this process.

    Recording takes no lock (see :meth:`record`); states are then plain attribute writes by
    the operation's Work, so an entry may be dumped mid-update (as torch's may).
    """

    def __init__(self, capacity: int, capture_stacks: bool = True) -> None:
        if capacity <= 0:
            raise ValueError(f"capacity must be positive, got {capacity}")
        self.capacity = capacity
        self.capture_stacks = capture_stacks
        self._gather = (_gather_traceback or _capture_stack) if capture_stacks else None
        self._slots: list[Entry | None] = [None] * capacity
        self._ids = itertools.count()
        self._lock = threading.Lock()  # groups, the dumped flag: not the recording path
        self._groups: weakref.WeakKeyDictionary[Any, GroupRecord] = weakref.WeakKeyDictionary()
        self._by_name: dict[str, GroupRecord] = {}  # kept after a group is gone: its entries stay
        self._pg_ids = itertools.count()
        self._last_group: tuple[Any, GroupRecord | None] = (lambda: None, None)
        self._dumped = False
        # descriptions already seen -> one shared copy (see :meth:`_describe`)
        self._one: dict[tuple[torch.Size, torch.dtype], tuple] = {}
        self._many: dict[tuple, tuple] = {}

    # -- recording ------------------------------------------------------------------------------
    def group(self, pg: Any) -> GroupRecord:
        """The record of ``pg``, made on its first operation."""
        record = self._groups.get(pg)
        if record is None:
            with self._lock:
                record = self._groups.get(pg)
                if record is None:
                    record = GroupRecord(pg, next(self._pg_ids))
                    self._groups[pg] = record
                    self._by_name[record.name] = record
        self._last_group = (weakref.ref(pg), record)
        return record

    def record(
        self,
        pg: Any,
        op_type: str,
        seq: int,
        inputs: Any,
        outputs: Any,
        timeout: Any = None,
        peer: int | None = None,
    ) -> Entry:
        """Record a new operation of ``pg`` (state "scheduled") and return its entry.

        ``seq`` is the group's collective sequence number (ignored for ``send``/``recv``),
        ``inputs``/``outputs`` its tensors (``inputs=None``: the outputs, for in-place
        operations), ``timeout`` a timedelta or seconds, ``peer`` the other rank of a p2p.

        No lock: the ids come from ``itertools.count`` objects, whose ``next`` runs in C
        without releasing the GIL, so two threads never get the same one; the entry is
        filled before it is published by one list-slot store, itself atomic under the GIL
        (the entry it replaces is freed there, running no Python code: it has no ``__del__``
        and holds no object that has one). Two threads recording on one group at once may
        leave the group's ``p2p_seq`` or ``enqueued`` at the earlier of their values, until
        its next operation: torch's analyzer reads entries, not those.
        """
        last = self._last_group  # (weak reference, record): most operations use one group
        group = last[1] if last[0]() is pg else self.group(pg)
        if op_type in P2P_OPS:
            entry: Entry = P2PEntry()
            entry.p2p_seq_id = group.p2p_seq = next(group.p2p_ids)
            entry.collective_seq_id = group.enqueued
        else:
            entry = Entry()
            entry.collective_seq_id = group.enqueued = seq
            entry.p2p_seq_id = group.p2p_seq
        entry.op_id = next(group.op_ids)
        entry.group = group
        entry.op_type = op_type
        entry.peer = peer
        entry.outputs = self._describe(outputs, op_type in STACKED_OUTPUTS)
        entry.inputs = None if inputs is None else self._describe(inputs, op_type in STACKED_INPUTS)
        entry.timeout = timeout
        entry.retired = False
        entry.time_started_ns = entry.time_completed_ns = None
        entry.thread_id = get_ident()
        gather = self._gather  # positional: keywords cost as much as the capture's setup
        entry.stack = None if gather is None else gather(True, False, False)
        entry.record_id = record_id = next(self._ids)
        entry.time_created_ns = time_ns()
        self._slots[record_id % self.capacity] = entry
        return entry

    def _describe(self, value: Any, stacked: bool) -> tuple:
        """:func:`describe`, shared: an entry keeps the copy made for the first operation with
        the same sizes and dtypes, and the new one is freed at once.

        Keeping a fresh tuple and ``torch.Size`` per entry for ``capacity`` operations is what
        made recording cost most (long-lived objects the garbage collector tracks, freed cold);
        a shared one costs a dictionary lookup. Each table is emptied when it reaches
        :data:`SHARED_LIMIT` descriptions (a job whose shapes never repeat). Sizes that
        cannot be hashed (symbolic ones) are kept unshared.
        """
        try:
            if type(value) is list and len(value) == 1 and not stacked:  # Work's [[tensor]]
                item = value[0]
                if type(item) is list and len(item) == 1:
                    tensor = item[0]
                    if type(tensor) is not list and type(tensor) is not tuple:
                        key = (tensor.shape, tensor.dtype)
                        shared = self._one.get(key)
                        return shared if shared is not None else _share(self._one, key, (key,))
            found = describe(value, stacked)
            shared = self._many.get(found)
            return shared if shared is not None else _share(self._many, found, found)
        except TypeError:  # unhashable (symbolic) sizes: kept as they are
            return describe(value, stacked)

    # -- dumping --------------------------------------------------------------------------------
    def entries(self, only_active: bool = False) -> list[Entry]:
        """The entries kept, oldest first (``only_active``: those not completed)."""
        kept = [entry for entry in list(self._slots) if entry is not None]  # list(): one copy
        kept.sort(key=lambda entry: entry.record_id)
        if only_active:
            kept = [entry for entry in kept if entry.state != COMPLETED]
        return kept

    def reset(self) -> None:
        """Forget every entry (the groups stay known); the next record id continues."""
        with self._lock:
            self._slots = [None] * self.capacity  # a record racing this lands in the old one
            self._dumped = False

    def dump_dict(
        self,
        include_collectives: bool = True,
        include_stack_traces: bool = True,
        only_active: bool = False,
    ) -> dict[str, Any]:
        """The dump as torch's ``_dump_fr_trace`` builds it before pickling."""
        with self._lock:
            groups = list(self._by_name.values())
        dump: dict[str, Any] = {
            "version": VERSION,
            "pg_config": {group.name: group.config() for group in groups},
            "pg_status": {group.name: group.status() for group in groups},
            "comm_lib_version": "",
        }
        if include_collectives:
            kept = self.entries(only_active)
            threads = {thread.ident: thread.name for thread in threading.enumerate()}
            frames: list[Any] = [None] * len(kept)
            if include_stack_traces:
                stacks = [entry.stack for entry in kept if entry.stack is not None]
                symbolized = iter(_symbolize(stacks))
                frames = [[] if e.stack is None else next(symbolized) for e in kept]
            dump["entries"] = [e.to_dict(threads, f) for e, f in zip(kept, frames, strict=True)]
        return dump

    def dump_pickle(
        self,
        include_collectives: bool = True,
        include_stack_traces: bool = True,
        only_active: bool = False,
    ) -> bytes:
        """The dump pickled, as torch's ``_dump_fr_trace`` returns it (its analyzer reads it)."""
        return pickle.dumps(self.dump_dict(include_collectives, include_stack_traces, only_active))

    def dump_json(self, include_collectives: bool = True, only_active: bool = False) -> bytes:
        """The dump as JSON, as torch's ``_dump_fr_trace_json`` writes it: no stacks, unset
        times as 0, ``pg_status`` values as strings, keys sorted."""
        dump = self.dump_dict(include_collectives, False, only_active)
        dump["nccl_comm_state"] = {}
        dump["pg_status"] = {
            name: {key: str(value) for key, value in status.items()}
            for name, status in dump["pg_status"].items()
        }
        for entry in dump.get("entries", ()):
            for key in ("time_discovered_started_ns", "time_discovered_completed_ns"):
                if entry[key] is None:
                    entry[key] = 0
        return json.dumps(dump, sort_keys=True, separators=(",", ":")).encode()

    def write_file(self, rank: int, prefix: str | None = None) -> str:
        """Write the pickled dump to ``<prefix><rank>`` (default prefix: :func:`dump_prefix`)
        atomically, and return the path."""
        path = f"{dump_prefix() if prefix is None else prefix}{rank}"
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        data = self.dump_pickle()
        scratch = os.path.join(directory, f".pyc10d-fr-{os.getpid()}-{get_ident()}")
        try:  # mode 0o666 less the umask, as a plain open() makes it
            fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
            with os.fdopen(fd, "wb") as file:
                file.write(data)
            os.replace(scratch, path)
        except BaseException:
            if os.path.exists(scratch):
                os.unlink(scratch)
            raise
        return path

    def dump_on_failure(self, entry: Entry, error: BaseException) -> str | None:
        """Write this process's dump once, for the first operation that timed out or lost a
        peer; return the path (None if already written, turned off, or it failed)."""
        if os.environ.get(DUMP_ON_FAILURE_VAR, "1").strip().lower() in ("0", "false", "no"):
            return None
        with self._lock:
            if self._dumped:
                return None
            self._dumped = True
        try:
            path = self.write_file(entry.group.global_rank)
        except Exception as exc:  # the operation's own error matters more than the dump's
            log.error("flight recorder: could not write the dump after %s: %s", error, exc)
            return None
        log.warning(
            "flight recorder: %s (%s) failed: %s; dumped %d entries to %s",
            entry.profiling_name,
            entry.group.name,
            error,
            len(self.entries()),
            path,
        )
        return path


# -- the process's recorder ---------------------------------------------------------------------
_UNREAD: Any = object()
_recorder: FlightRecorder | None = _UNREAD
_configure_lock = threading.Lock()


def buffer_size_from_env() -> int:
    """The buffer size the environment asks for (:data:`DEFAULT_BUFFER_SIZE` if unset)."""
    for var in BUFFER_SIZE_VARS:
        value = os.environ.get(var)
        if value is not None and value.strip():
            try:
                return max(0, int(value))
            except ValueError:
                raise ValueError(f"{var} must be an integer, got {value!r}") from None
    return DEFAULT_BUFFER_SIZE


def dump_prefix() -> str:
    """The dump file prefix: ``TORCH_FR_DUMP_TEMP_FILE`` (or ``TORCH_NCCL_DEBUG_INFO_TEMP_FILE``),
    else torch's default ``$XDG_CACHE_HOME/torch/comm_lib_trace_rank_`` (``~/.cache`` without
    it). Read at each dump, so a job may change it between dumps."""
    for var in DUMP_FILE_VARS:
        value = os.environ.get(var)
        if value:
            return value
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "torch", "comm_lib_trace_rank_")


def _make(buffer_size: int | None) -> FlightRecorder | None:
    size = buffer_size_from_env() if buffer_size is None else buffer_size
    capture = os.environ.get(STACK_VAR, "1").strip().lower() not in ("0", "false", "no")
    return FlightRecorder(size, capture) if size > 0 else None


def configure(buffer_size: int | None = None) -> FlightRecorder | None:
    """Replace the process's recorder with an empty one of ``buffer_size`` entries (None: from
    the environment); 0 turns recording off. Returns the recorder (None when off)."""
    global _recorder
    with _configure_lock:
        _recorder = _make(buffer_size)
        return _recorder


def current() -> FlightRecorder | None:
    """The process's recorder (made from the environment on first use); None when off."""
    global _recorder
    recorder = _recorder
    if recorder is _UNREAD:
        with _configure_lock:
            if _recorder is _UNREAD:
                _recorder = _make(None)
            recorder = _recorder
    return recorder


def _after_fork_in_child() -> None:
    """A forked child starts with fresh locks: one held by another thread of the parent at the
    fork would never be released there."""
    global _configure_lock
    _configure_lock = threading.Lock()
    if isinstance(_recorder, FlightRecorder):
        _recorder._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _is_comm_failure(error: BaseException | None) -> bool:
    """True for a timeout or a lost peer, directly or as the cause of ``error``."""
    for _ in range(4):
        if error is None:
            return False
        if isinstance(error, (TransportTimeout, PeerFailedError)):
            return True
        error = error.__cause__
    return False


def failed(entry: Entry, error: BaseException) -> None:
    """End ``entry`` of an operation that failed (called by ``Work`` as it finishes): retired,
    never completed; on a timeout or a lost peer, dump first (once per process), so the dump
    shows the operation where it stopped."""
    if _is_comm_failure(error):
        recorder = _recorder
        if isinstance(recorder, FlightRecorder):
            recorder.dump_on_failure(entry, error)
    entry.retire()
