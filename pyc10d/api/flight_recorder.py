"""``pyc10d.flight_recorder``: dump the flight recorder, in the format torch's analyzer reads.

Every operation of every group is recorded in a per-process ring buffer (see
:mod:`pyc10d.process_group.flight_recorder`; ``TORCH_FR_BUFFER_SIZE`` entries, default 2000,
0 = off). To see why a job hangs, dump each rank's buffer into one directory and run torch's
analyzer on it::

    import pyc10d as dist
    dist.flight_recorder.dump_to_file()      # writes <TORCH_FR_DUMP_TEMP_FILE><rank>

    $ python -m torch.distributed.flight_recorder.fr_trace <dir> [-j]

A rank whose operation times out or loses a peer writes that file by itself. The functions:

* :func:`dump` / :func:`dump_json`: the dump as bytes (pickle, or JSON without stacks);
  ``_dump_fr_trace`` and ``_dump_fr_trace_json`` are the same under the names and camel-case
  keywords of ``torch._C._distributed_c10d``.
* :func:`dump_to_file`: write the pickle to ``<prefix><rank>``, as torch's automatic dump does.
* :func:`reset`: start over (a new, empty buffer sized from the environment, or as given).
* :func:`is_enabled`, :func:`buffer_size`: whether and how much is recorded.
"""

from __future__ import annotations

import json
import os
import pickle

from ..process_group import flight_recorder as _recorder
from .state import _world

__all__ = [
    "_dump_fr_trace",
    "_dump_fr_trace_json",
    "buffer_size",
    "dump",
    "dump_json",
    "dump_to_file",
    "is_enabled",
    "reset",
]


def _off_dump(include_collectives: bool) -> dict:
    """What a dump holds when recording is off: no groups, no entries (as torch's)."""
    dump: dict = {
        "version": _recorder.VERSION,
        "pg_config": {},
        "pg_status": {},
        "comm_lib_version": "",
    }
    if include_collectives:
        dump["entries"] = []
    return dump


def dump(
    include_collectives: bool = True,
    include_stack_traces: bool = True,
    only_active: bool = False,
) -> bytes:
    """This process's flight recorder, pickled as torch's ``_dump_fr_trace`` returns it.

    ``include_collectives=False`` leaves the entries out (groups and their status only),
    ``include_stack_traces=False`` the stacks, ``only_active=True`` the completed operations.
    ``pickle.loads`` gives a dict with ``version``, ``pg_config``, ``pg_status``,
    ``comm_lib_version`` and ``entries``.
    """
    recorder = _recorder.current()
    if recorder is None:
        return pickle.dumps(_off_dump(include_collectives))
    return recorder.dump_pickle(include_collectives, include_stack_traces, only_active)


def dump_json(include_collectives: bool = True, only_active: bool = False) -> bytes:
    """This process's flight recorder as JSON (torch's ``_dump_fr_trace_json``: no stacks)."""
    recorder = _recorder.current()
    if recorder is None:
        data = _off_dump(include_collectives)
        data["nccl_comm_state"] = {}
        return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    return recorder.dump_json(include_collectives, only_active)


def _dump_fr_trace(
    includeCollectives: bool | None = None,
    includeStackTraces: bool | None = None,
    onlyActive: bool | None = None,
) -> bytes:
    """torch's ``torch._C._distributed_c10d._dump_fr_trace``: :func:`dump` (None: default)."""
    return dump(
        includeCollectives is not False, includeStackTraces is not False, onlyActive is True
    )


def _dump_fr_trace_json(
    includeCollectives: bool | None = None, onlyActive: bool | None = None
) -> bytes:
    """torch's ``torch._C._distributed_c10d._dump_fr_trace_json``: :func:`dump_json`."""
    return dump_json(includeCollectives is not False, onlyActive is True)


def _default_rank() -> int:
    """This process's global rank: the default group's, else ``$RANK``, else 0."""
    if _world.default_pg is not None:
        return _world.global_rank
    return int(os.environ.get("RANK", "0"))


def dump_to_file(rank: int | None = None, prefix: str | None = None) -> str | None:
    """Write the pickled dump (with stacks) to ``<prefix><rank>`` and return the path.

    ``prefix`` defaults to ``TORCH_FR_DUMP_TEMP_FILE`` (or ``TORCH_NCCL_DEBUG_INFO_TEMP_FILE``),
    else torch's ``~/.cache/torch/comm_lib_trace_rank_``; ``rank`` to the global rank. The file
    is replaced atomically. None (nothing written) when recording is off.
    """
    recorder = _recorder.current()
    if recorder is None:
        return None
    return recorder.write_file(_default_rank() if rank is None else rank, prefix)


def reset(buffer_size: int | None = None) -> None:
    """Drop every entry: a new buffer of ``buffer_size`` entries (None: ``TORCH_FR_BUFFER_SIZE``
    as it is now; 0 turns recording off). Operations already running are no longer tracked."""
    _recorder.configure(buffer_size)


def is_enabled() -> bool:
    """True when operations are being recorded (``TORCH_FR_BUFFER_SIZE`` is not 0)."""
    return _recorder.current() is not None


def buffer_size() -> int:
    """The number of entries kept (0: recording is off)."""
    recorder = _recorder.current()
    return 0 if recorder is None else recorder.capacity
