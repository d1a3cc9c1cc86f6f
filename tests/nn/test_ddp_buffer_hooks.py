"""Buffer communication hooks (``_register_buffer_comm_hook``), against torch's DDP on Gloo.

Mirrors torch's ``_test_ddp_buffer_hook_allreduce`` (an allreduce of every buffer, before or
after the forward, waited at once or returned as futures that DDP awaits at the end of
backward) and ``test_ddp_broadcast_buffer_via_hook``: pyc10d's DDP with the hook must match
pyc10d's DDP without one plus the same allreduce by hand, and torch's DDP with the same hook on
a torch Gloo group (buffers and gradients, 1e-5). Also torch's error for a non-callable hook,
and a hook whose collective fails: the error surfaces at the end of backward.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as TorchDDP
from torch.nn.parallel.distributed import _BufferCommHookLocation as TorchLocation

import pyc10d as dist
from pyc10d.nn.parallel import DistributedDataParallel as DDP
from pyc10d.nn.parallel.distributed import _BufferCommHookLocation
from pyc10d.testing import spawn, world_sizes

from tests.helpers.ddp import assert_same_across_ranks, error_of
from tests.nn.torch_reference import assert_close_all, finish_both, init_both

TIMEOUT = 120


class NetWithBuffers(nn.Module):
    """torch's NetWithBuffers: two layers and a buffer the forward bumps."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(10, 10, bias=False)
        self.b = nn.Linear(10, 1, bias=False)
        self.register_buffer("buffer", torch.randn(1, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.buffer.add_(1)
        return self.b(self.a(x))


def _allreduce_hook(comm, return_futures: bool):
    """torch's seed hook, on ``comm`` (pyc10d or torch.distributed)."""

    def buffer_comm_hook(ddp, named_buffers):
        futs = [
            comm.all_reduce(buffer, group=ddp.process_group, async_op=True).get_future()
            for buffer in named_buffers.values()
        ]
        if return_futures:
            return futs
        torch.futures.collect_all(futs).wait()
        return None

    return buffer_comm_hook


def _buffers(ddp) -> list[torch.Tensor]:
    return [b.detach().clone() for b in ddp.module.buffers()]


def _allreduce_buffers(ddp) -> None:
    for tensor in ddp.module.buffers():
        dist.all_reduce(tensor)


def _allreduce_case(tdist, rank: int, pre: bool, return_futures: bool) -> None:
    torch.manual_seed(rank)
    model = NetWithBuffers()
    ours = DDP(model)  # rank 0's parameters and buffers: the copies below start from them
    location = _BufferCommHookLocation.PRE_FORWARD if pre else _BufferCommHookLocation.POST_FORWARD
    ours._register_buffer_comm_hook(ours, _allreduce_hook(dist, return_futures), location)
    no_hook = DDP(copy.deepcopy(model), broadcast_buffers=False)
    theirs = TorchDDP(copy.deepcopy(model))
    torch_location = TorchLocation.PRE_FORWARD if pre else TorchLocation.POST_FORWARD
    theirs._register_buffer_comm_hook(
        theirs, _allreduce_hook(tdist, return_futures), torch_location
    )
    inp = torch.randn(2, 10)
    what = f"pre={pre} futures={return_futures}"
    for _ in range(2):
        loss_hook = ours(inp).sum()
        if pre:
            _allreduce_buffers(no_hook)
        loss_no_hook = no_hook(inp).sum()
        if not pre:
            _allreduce_buffers(no_hook)
        loss_torch = theirs(inp).sum()
        if not return_futures:
            assert_close_all(_buffers(ours), _buffers(no_hook), f"{what} vs no hook")
            assert_close_all(_buffers(ours), _buffers(theirs), f"{what} vs torch")
        for loss in (loss_hook, loss_no_hook, loss_torch):
            loss.backward()
        # futures are awaited at the end of backward; before the forward they race it (torch's
        # test does not compare that case either)
        if not (return_futures and pre):
            assert_close_all(_buffers(ours), _buffers(no_hook), f"{what} after backward")
            assert_close_all(_buffers(ours), _buffers(theirs), f"{what} after backward vs torch")
            assert_same_across_ranks(_buffers(ours))
        grads = [p.grad for p in ours.parameters()]
        assert_close_all(grads, [p.grad for p in theirs.parameters()], f"{what} grads")


def _broadcast_via_hook(rank: int) -> None:
    """torch's test_ddp_broadcast_buffer_via_hook: the default broadcast, run by a hook."""

    def buffer_comm_hook(ddp, named_buffers):
        ddp._default_broadcast_coalesced(list(named_buffers.values()))

    torch.manual_seed(rank)
    model = NetWithBuffers()
    hooked = DDP(model)
    hooked._register_buffer_comm_hook(hooked, buffer_comm_hook)
    plain = DDP(copy.deepcopy(model))
    inp = torch.randn(2, 10)
    for _ in range(2):
        loss_hook, loss_plain = hooked(inp).sum(), plain(inp).sum()
        assert_close_all(_buffers(hooked), _buffers(plain), "broadcast via hook")
        assert_same_across_ranks(_buffers(hooked))
        loss_hook.backward()
        loss_plain.backward()


def _failing_future(state, named_buffers):
    fut = torch.futures.Future()
    fut.set_exception(RuntimeError("buffer sync failed on purpose"))
    return [fut]


def _errors() -> dict[str, str]:
    out = {}
    ours, theirs = DDP(nn.Linear(2, 2)), TorchDDP(nn.Linear(2, 2))
    out["ours"] = error_of(lambda: ours._register_buffer_comm_hook(None, 3), AssertionError)
    out["theirs"] = error_of(lambda: theirs._register_buffer_comm_hook(None, 3), AssertionError)
    out["location"] = error_of(
        lambda: ours._register_buffer_comm_hook(None, _failing_future, "AT_LUNCH"), ValueError
    )
    model = NetWithBuffers()
    failing = DDP(model)
    failing._register_buffer_comm_hook(None, _failing_future)
    loss = failing(torch.randn(2, 10)).sum()
    out["failed"] = error_of(loss.backward)
    return out


def buffer_hooks(ctx) -> dict[str, str]:
    tdist = init_both(ctx)
    for pre in (True, False):
        for return_futures in (False, True):
            _allreduce_case(tdist, ctx.rank, pre, return_futures)
    _broadcast_via_hook(ctx.rank)
    out = _errors()
    finish_both(tdist)
    return out


@world_sizes(2, 3)
def test_buffer_hooks(world_size):
    for out in spawn(buffer_hooks, world_size, timeout=TIMEOUT):
        assert out["ours"] == out["theirs"] == "hook must be callable, got int"
        assert "AT_LUNCH" in out["location"]
        assert "buffer sync failed on purpose" in out["failed"]
