"""Multi-process test harness: run a function on ``world_size`` ranks and check what they return.

:func:`spawn` starts ``world_size`` fresh processes, calls ``fn(ctx, *args)`` in each, and returns
the values they return, in rank order. ``ctx`` is a :class:`RankContext`: ``rank``,
``world_size``, a fresh ``tmpdir``, an ``init_file``/``init_method`` (``file://``) for rendezvous,
and ``store``, a client of a fresh, empty TCPStore the parent hosts for the run. Each rank also has
``MASTER_ADDR``, ``MASTER_PORT`` (a free port), ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` set,
so ``env://`` rendezvous works too. For example, in ``tests/test_allreduce.py``::

    import pyc10d as dist
    import torch
    from pyc10d.testing import spawn, world_sizes

    def allreduce_rank(ctx):  # module level: the ranks import it by name
        dist.init_process_group("gloo", init_method=ctx.init_method,
                                rank=ctx.rank, world_size=ctx.world_size)
        t = torch.tensor([ctx.rank + 1.0])
        dist.all_reduce(t)
        dist.destroy_process_group()
        return t.item()

    @world_sizes(2, 3)
    def test_allreduce(world_size):
        expected = world_size * (world_size + 1) / 2
        assert spawn(allreduce_rank, world_size, timeout=30) == [expected] * world_size

Failures are test failures: if a rank raises, :class:`RankFailedError` (an AssertionError) starts
with ``rank N failed:`` and that rank's traceback; a rank that dies without one (``os._exit``, a
signal) is reported with its exit code or signal. The other ranks get a few seconds to finish,
then are killed. If ranks are still running after ``timeout`` seconds, :class:`RankTimeoutError`
names them and shows their Python stacks (dumped by faulthandler on SIGUSR1). Every rank is killed
and reaped, and the temporary directory removed, before ``spawn`` returns or raises.

Rank functions must be importable by the child processes: define them at module level in a module
on ``sys.path``. pytest's default ``prepend`` import mode makes test modules importable; with
``--import-mode=importlib`` they are not, so put rank functions in a helper module instead. The
default start method, ``forkserver``, preloads torch and pyc10d once, so that a run costs a fork
per rank rather than a fresh interpreter importing torch (``start_method="spawn"``).
"""

from .context import RankContext
from .errors import RankFailedError, RankTimeoutError
from .harness import free_port, spawn, world_sizes

__all__ = [
    "RankContext",
    "RankFailedError",
    "RankTimeoutError",
    "free_port",
    "spawn",
    "world_sizes",
]
