"""Where the microseconds of pyc10d's small allreduce go, layer by layer (world 2, one host).

Starts a fresh world-2 pyc10d job (env://, default transport: the shared-memory arena) and, in
both ranks, times the same 4-byte float32 allreduce entered at each layer, outermost first:

- ``dist.all_reduce(t)``: the module API (argument checks, group lookup, options, debug hook);
- ``pg._allreduce_fast(t, SUM, False).wait()``: the module API's fast path, where the tree has
  one (issue 14's work on the hot path; "n/a" otherwise);
- ``pg.allreduce([t], opts).wait()`` with prebuilt options: validation, Work, the engine
  hand-off, issue order, OpContext, Deadline, inference mode;
- ``collectives.shm.allreduce(arena, t, op, deadline)``: the collective on the arena alone (one
  round: copy into the slot, post, wait for the peer, combine, release, finish);
- one arena round without data (``start_round``, ``post``, ``wait_posted``, ``release``);
- the bare counter exchange under it (``publish`` + ``wait`` of one arena counter);
- then the asynchronous rows (``async_op=True`` / ``asyncOp=True``, then ``wait()``) of the
  first three, each against its synchronous row.

Layers that talk run in interleaved blocks of back-to-back calls (a barrier before each block;
a block's time per call is the slowest rank's; median over blocks). Local pieces (no
communication: options, validation, Work, Deadline, inference mode, the 1-element torch ops) are
timed alone (best-of-5 mean). A cProfile of ``dist.all_reduce(t)`` on rank 0 closes the report.
Layers whose internals moved (other work changes them) print "n/a" with the reason.

    python benchmarks/latency_profile.py [--bytes 4] [--calls 2000] [--blocks 7] [--output F]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import timeit
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from _collectives_rank import TorchSync, timed_block
from _common import code_state, cprofile_rows, free_port, human, rank_env, run_processes

Layer = Callable[[], Any]


# ==== the layers (every rank builds the same ones, in the same order) =========================


def _arena_layers(pg: Any, tensor: Any, deadline: Any) -> dict[str, Layer]:
    """The arena's layers: the collective alone, a round without data, a counter exchange."""
    import torch

    from pyc10d.collectives import shm
    from pyc10d.core.tags import signature
    from pyc10d.transport.shm import arena as arena_module

    inference = torch._C._InferenceMode
    arena = pg._arena
    if arena is None:
        raise RuntimeError("this group has no shared-memory arena")
    op = pg._prepare_op(_options(False))[0]
    peers, posted = arena.peers, arena_module.POSTED
    sig = signature("allreduce", tensor.dtype, tensor.numel(), op)

    def round_alone() -> None:
        arena.expect(sig)
        round_ = arena.start_round(deadline, "profile")
        arena.post(round_)
        arena.wait_posted(round_, peers, deadline, "profile")
        arena.release(round_)

    def counter_exchange() -> None:
        round_ = arena.next_round()
        arena.publish(posted, round_)
        arena.wait(posted, round_, peers, deadline, "profile")

    def collective() -> None:
        with inference(True):
            shm.allreduce(arena, tensor, op, deadline)

    return {
        "`shm.allreduce(arena, t, op, deadline)` (the collective on the arena, in inference "
        "mode as `ProcessGroup._run` runs it)": collective,
        "one arena round, no data (start_round, post, wait_posted, release)": round_alone,
        "counter exchange (`arena.publish` + `arena.wait`)": counter_exchange,
    }


def _options(async_op: bool) -> Any:
    from pyc10d.process_group.options import AllreduceOptions

    opts = AllreduceOptions()
    opts.asyncOp = async_op
    return opts


API, API_ASYNC = "`dist.all_reduce(t)`", "`dist.all_reduce(t, async_op=True).wait()`"
FAST = "`pg._allreduce_fast(t, SUM, False).wait()` (the module API's fast path)"
FAST_ASYNC = "`pg._allreduce_fast(t, SUM, True).wait()`"
PG = "`pg.allreduce([t], opts).wait()`, prebuilt opts, asyncOp=False"
PG_ASYNC = "`pg.allreduce([t], opts).wait()`, prebuilt opts, asyncOp=True"
ASYNC_OF = {API_ASYNC: API, FAST_ASYNC: FAST, PG_ASYNC: PG}  # async row -> its sync row


def _fast_layers(dist: Any, pg: Any, tensor: Any) -> dict[str, Layer | str]:
    """The module API's fast path, when this tree has one (``pg._allreduce_fast``)."""
    fast = getattr(pg, "_allreduce_fast", None)
    if fast is None:
        return {FAST: "n/a (no `ProcessGroup._allreduce_fast` in this tree)"}
    op = dist.ReduceOp.SUM
    layers: dict[str, Layer | str] = {}
    for name, async_op in ((FAST, False), (FAST_ASYNC, True)):
        work = fast(tensor, op, async_op)  # every rank builds (and so calls) the same
        if work is None:
            layers[name] = "n/a (`_allreduce_fast` declined this call)"
            continue
        work.wait()
        layers[name] = lambda a=async_op: fast(tensor, op, a).wait()
    return layers


def talking_layers(dist: Any, tensor: Any) -> dict[str, Layer | str]:
    """Each layer's call (a string: why the layer is not available): the synchronous chain
    outermost first, then the asynchronous rows (see ``ASYNC_OF``)."""
    from pyc10d.core.timeouts import Deadline

    pg = dist._get_default_group()
    sync_opts, async_opts = _options(False), _options(True)
    layers: dict[str, Layer | str] = {API: lambda: dist.all_reduce(tensor)}
    layers.update(_fast_layers(dist, pg, tensor))
    layers[PG] = lambda: pg.allreduce([tensor], sync_opts).wait()
    try:
        layers.update(_arena_layers(pg, tensor, Deadline(timedelta(seconds=60))))
    except (AttributeError, ImportError, TypeError, RuntimeError) as exc:
        layers["arena layers"] = f"n/a ({type(exc).__name__}: {exc})"
    layers[API_ASYNC] = lambda: dist.all_reduce(tensor, async_op=True).wait()
    if FAST_ASYNC in layers:  # keep the async rows together, in chain order
        layers[FAST_ASYNC] = layers.pop(FAST_ASYNC)
    layers[PG_ASYNC] = lambda: pg.allreduce([tensor], async_opts).wait()
    return layers


def local_pieces(dist: Any, tensor: Any) -> dict[str, Layer | str]:
    """Per-call pieces that need no peer (a string: why one is not available)."""
    import torch

    from pyc10d.core.timeouts import Deadline

    pg = dist._get_default_group()
    timeout, opts = timedelta(seconds=60), _options(False)
    other = torch.ones_like(tensor)
    pieces: dict[str, Layer | str] = {
        "`AllreduceOptions()` + asyncOp set": lambda: _options(False),
        "`Deadline(timeout)`": lambda: Deadline(timeout),
        "`torch._C._InferenceMode(True)` enter + exit": lambda: _inference(torch),
        "1-element `t.copy_(src)`": lambda: tensor.copy_(other),
        "1-element `torch.add(a, b, out=t)`": lambda: torch.add(other, other, out=tensor),
    }
    pieces.update(_internal_pieces(pg, tensor, opts, timeout))
    return pieces


def _inference(torch: Any) -> None:
    with torch._C._InferenceMode(True):
        pass


def _internal_pieces(pg: Any, tensor: Any, opts: Any, timeout: Any) -> dict[str, Layer | str]:
    """Pieces of pyc10d's internals (they move: each is guarded)."""
    pieces: dict[str, Layer | str] = {}
    try:
        from pyc10d.process_group import validation

        rank, size = pg.rank(), pg.size()
        pieces["`validation.check_allreduce(...)`"] = lambda: validation.check_allreduce(
            rank, size, [tensor], opts
        )
    except (AttributeError, ImportError) as exc:
        pieces["`validation.check_allreduce(...)`"] = f"n/a ({exc})"
    try:
        from pyc10d.process_group.work import Work

        def make_work() -> Any:
            return Work("allreduce", 0, [[tensor]], group=pg, inputs=None, timeout=timeout)

        make_work()
        pieces["`Work(...)` (made, never run)"] = make_work
    except (AttributeError, ImportError, TypeError) as exc:
        pieces["`Work(...)` (made, never run)"] = f"n/a ({exc})"
    try:
        from pyc10d.collectives.reduction import combine

        op = pg._prepare_op(opts)[0]
        parts = [tensor.clone(), tensor.clone()]
        combine(op, tensor, parts)
        pieces["`combine(op, t, [a, b])` (the reduction, 1 element)"] = lambda: combine(
            op, tensor, parts
        )
    except (AttributeError, ImportError, TypeError) as exc:
        pieces["`combine(op, t, [a, b])`"] = f"n/a ({exc})"
    return pieces


def _local_us(fn: Layer, number: int = 20000) -> float:
    """Best-of-5 mean µs of a local call."""
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def _profiled(call: Layer, calls: int, profile: bool) -> list:
    """Rank 0: the top 15 of a cProfile of ``calls`` calls; other ranks make the same calls."""
    if profile:
        return cprofile_rows(call, calls)[:15]
    for _ in range(calls):
        call()
    return []


def _transport_name(pg: Any) -> str:
    name = type(getattr(pg, "_transport", None)).__name__
    return name + (" + shared-memory arena" if getattr(pg, "_arena", None) is not None else "")


def rank_main(cfg: dict, out: Path) -> None:
    """One rank: time every layer in interleaved blocks; rank 0 writes the JSON result."""
    import torch

    import pyc10d as dist

    torch.set_num_threads(1)
    dist.init_process_group(timeout=timedelta(seconds=120))
    tensor = torch.zeros(max(1, cfg["bytes"] // 4))
    sync = TorchSync(dist)
    try:
        layers = talking_layers(dist, tensor)
        callable_layers = {k: v for k, v in layers.items() if callable(v)}
        for call in callable_layers.values():
            for _ in range(50):  # warm up every path
                call()
        samples: dict[str, list[float]] = {name: [] for name in callable_layers}
        for index in range(cfg["blocks"]):
            names = list(callable_layers)
            for name in names if index % 2 == 0 else reversed(names):
                samples[name].append(timed_block(callable_layers[name], cfg["calls"], sync) * 1e6)
        pieces = {
            name: (_local_us(piece) if callable(piece) else piece)
            for name, piece in local_pieces(dist, tensor).items()
        }
        sync.barrier()
        rows = _profiled(lambda: dist.all_reduce(tensor), cfg["calls"], dist.get_rank() == 0)
        sync.barrier()
        result = {
            "layers": {
                name: (statistics.median(samples[name]) if name in samples else layer)
                for name, layer in layers.items()
            },
            "pieces": pieces,
            "cprofile": rows,
            "transport": _transport_name(dist._get_default_group()),
        }
        if dist.get_rank() == 0:
            out.write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


# ==== the launcher and report ==================================================================


def run(cfg: dict) -> dict:
    """A fresh world-2 job; rank 0's result."""
    with tempfile.TemporaryDirectory(prefix="latency_profile-") as name:
        out = Path(name) / "result.json"
        port = free_port()
        argv = [sys.executable, __file__, "--rank", "--config", json.dumps(cfg)]
        argv += ["--result", str(out)]
        commands = [(argv, rank_env(rank, 2, port)) for rank in range(2)]
        run_processes(commands, Path(name), 600, "latency profile job")
        return json.loads(out.read_text())


def _us(value: float | str) -> str:
    return value if isinstance(value, str) else f"{value:.1f}"


def report(result: dict, cfg: dict, meta: str) -> str:
    """The markdown report."""
    layers = result["layers"]
    lines = [
        f"### pyc10d {human(cfg['bytes'])} allreduce, world 2, layer by layer\n",
        meta + "\n",
        f"Each layer: {cfg['blocks']} interleaved blocks of {cfg['calls']} back-to-back calls, "
        f"µs per call of the slowest rank, median block (transport: {result['transport']}).\n",
        "| entered at (synchronous chain) | µs per call | minus the next row |",
        "|---|---:|---:|",
    ]
    chain = [name for name in layers if name not in ASYNC_OF]
    for index, name in enumerate(chain):
        value, below = layers[name], ""
        following = layers[chain[index + 1]] if index + 1 < len(chain) else None
        if isinstance(value, float) and isinstance(following, float):
            below = f"{value - following:+.1f}"
        lines.append(f"| {name} | {_us(value)} | {below} |")
    lines += [
        "",
        "| asynchronous row | µs per call | minus its synchronous row |",
        "|---|---:|---:|",
    ]
    for name in (n for n in layers if n in ASYNC_OF):
        value, sync = layers[name], layers.get(ASYNC_OF[name])
        both = isinstance(value, float) and isinstance(sync, float)
        lines.append(f"| {name} | {_us(value)} | {f'{value - sync:+.1f}' if both else ''} |")
    lines += ["", "Local pieces (no peer; best-of-5 mean µs per call):\n", "| piece | µs |"]
    lines += ["|---|---:|"]
    lines += [
        f"| {name} | {_us(v) if isinstance(v, str) else f'{v:.2f}'} |"
        for name, v in (result["pieces"].items())
    ]
    lines += [
        "",
        "cProfile of `dist.all_reduce(t)` on rank 0, top 15 by own time (µs per call, "
        "cProfile's overhead included):\n",
        "| function | own µs | cumulative µs | calls per call |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| `{n}` | {own:.2f} | {cum:.2f} | {c} |" for n, own, cum, c in result["cprofile"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run the job and print (or write) the report."""
    import os
    from datetime import date

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bytes", type=int, default=4, help="tensor size (default 4)")
    parser.add_argument("--calls", type=int, default=2000, help="calls per block")
    parser.add_argument("--blocks", type=int, default=7, help="blocks per layer")
    parser.add_argument("--output", type=Path, help="also write the report here")
    parser.add_argument("--rank", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rank:
        rank_main(json.loads(args.config), args.result)
        return
    cfg = {"bytes": args.bytes, "calls": args.calls, "blocks": args.blocks}
    load = os.getloadavg()[0]
    result = run(cfg)
    meta = (
        f"Made by `python {' '.join(sys.argv)}` on {date.today().isoformat()} at commit "
        f"{code_state()}; load average (1 min) {load:.2f} before, {os.getloadavg()[0]:.2f} after."
    )
    text = report(result, cfg, meta)
    print(text)
    if args.output is not None:
        args.output.write_text(text)


if __name__ == "__main__":
    main()
