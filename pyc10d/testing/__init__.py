"""Multi-process test harness: run a function on ``world_size`` ranks and check what they return.

:func:`spawn` starts ``world_size`` fresh processes, calls ``fn(ctx, *args)`` in each, and returns
the values they return, in rank order. ``ctx`` is a :class:`RankContext`: ``rank``,
``world_size``, a fresh ``tmpdir``, an ``init_file``/``init_method`` (``file://``) for rendezvous,
and ``store``, a client of a fresh, empty TCPStore the parent hosts for the run. Each rank also has
``MASTER_ADDR``, ``MASTER_PORT`` (a free port), ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` set,
so ``env://`` rendezvous works too. For example, in ``tests/api/test_exchange.py``::

    import pyc10d as dist
    from pyc10d.testing import spawn, world_sizes

    def exchange(ctx):  # module level: each rank imports it by name
        store, rank, size = next(dist.rendezvous(ctx.init_method, ctx.rank, ctx.world_size))
        store.set(f"hello/{rank}", f"from {rank}")
        return store.get(f"hello/{(rank + 1) % size}").decode()

    @world_sizes(2, 3)
    def test_exchange(world_size):
        results = spawn(exchange, world_size, timeout=30)
        assert results == [f"from {(r + 1) % world_size}" for r in range(world_size)]

Failures are test failures: if a rank raises, :class:`RankFailedError` (an AssertionError) starts
with ``rank N failed:`` and that rank's traceback; a rank that dies without one (``os._exit``, a
signal) is reported with its exit code or signal. The other ranks get a few seconds to finish,
then are killed. If ranks are still running after ``timeout`` seconds, :class:`RankTimeoutError`
names them and shows their Python stacks (dumped by faulthandler on SIGUSR1). Every rank is killed
and reaped, and the temporary directory removed, before ``spawn`` returns or raises.

Rank functions are pickled by reference, so each rank imports their module by name: define them
at module level, in a module that a fresh process can import under the same name (a test module
is, with pytest's default ``prepend`` import mode). A rank that cannot import it exits with code 1
and prints why on its stderr. The default start method, ``forkserver``, imports torch and pyc10d
(and pytest, when loaded) once in a server process that then forks each rank: a run costs tens of
milliseconds, not a fresh interpreter importing torch per rank (``start_method="spawn"``).

The harness owns SIGUSR1 in the ranks (for the stack dumps) and puts each rank in its own process
group, so that processes a rank starts are killed with it.
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
