"""Point-to-point messages of ``torch.distributed``: ``send``/``recv``, ``isend``/``irecv``,
``P2POp`` and ``batch_isend_irecv``.

As in torch, ``dst``/``src`` are global ranks and ``group_dst``/``group_src`` ranks within
``group`` (give one, not both); a receive without a source takes the first message from any
rank. On a rank outside ``group`` these warn and do nothing (``recv`` returns -1, the others None).
"""

from __future__ import annotations

from typing import Any

import torch

from ..process_group import ProcessGroup, Work
from .collectives import _check_single_tensor, _real, _root
from .state import get_global_rank, get_rank, info, is_non_member, resolve, warn_not_in_group

__all__ = ["P2POp", "batch_isend_irecv", "irecv", "isend", "recv", "send"]


def _not_self(pg: ProcessGroup, group_rank: int, what: str) -> None:
    """torch's ValueError for a blocking send to (or receive from) this very rank."""
    if group_rank == pg.rank():
        raise ValueError(
            f"Invalid {what} rank: {what} rank should not be the same as "
            "the rank of the current process."
        )


def isend(
    tensor: torch.Tensor,
    dst: int | None = None,
    group: ProcessGroup | None = None,
    tag: int = 0,
    group_dst: int | None = None,
) -> Work | None:
    """Start sending ``tensor`` to global rank ``dst`` (or group rank ``group_dst``); return the
    Work (torch's ``isend``). Complex tensors travel as real views, as in torch."""
    _check_single_tensor(tensor, "tensor")
    pg = resolve(group)
    if pg is None:
        warn_not_in_group("isend")
        return None
    return pg.send([_real(tensor)], _root(group, dst, group_dst, "dst"), tag)


def irecv(
    tensor: torch.Tensor,
    src: int | None = None,
    group: ProcessGroup | None = None,
    tag: int = 0,
    group_src: int | None = None,
) -> Work | None:
    """Start receiving into ``tensor`` from global rank ``src`` (or group rank ``group_src``);
    with neither, from whichever rank sends first (torch's ``irecv``). Returns the Work."""
    _check_single_tensor(tensor, "tensor")
    pg = resolve(group)
    if pg is None:
        warn_not_in_group("irecv")
        return None
    if src is None and group_src is None:
        return pg.recv_anysource([_real(tensor)], tag)
    return pg.recv([_real(tensor)], _root(group, src, group_src, "src"), tag)


def send(
    tensor: torch.Tensor,
    dst: int | None = None,
    group: ProcessGroup | None = None,
    tag: int = 0,
    group_dst: int | None = None,
) -> None:
    """Send ``tensor`` to global rank ``dst`` (or group rank ``group_dst``) and wait until it is
    sent. Sending to this rank itself raises ValueError, as in torch."""
    _check_single_tensor(tensor, "tensor")
    pg = resolve(group)
    if pg is None:
        warn_not_in_group("send")
        return
    peer = _root(group, dst, group_dst, "dst")
    _not_self(pg, peer, "destination")
    pg.send([_real(tensor)], peer, tag).wait()


def recv(
    tensor: torch.Tensor,
    src: int | None = None,
    group: ProcessGroup | None = None,
    tag: int = 0,
    group_src: int | None = None,
) -> int:
    """Receive into ``tensor`` from global rank ``src`` (or group rank ``group_src``; with neither,
    from any rank) and return the sender's global rank; -1 outside ``group`` (torch's ``recv``)."""
    _check_single_tensor(tensor, "tensor")
    pg = resolve(group)
    if pg is None:
        warn_not_in_group("recv")
        return -1
    if src is None and group_src is None:
        work = pg.recv_anysource([_real(tensor)], tag)
        work.wait()
        peer = work.source_rank()
        _not_self(pg, peer, "source")
    else:
        peer = _root(group, src, group_src, "src")
        pg.recv([_real(tensor)], peer, tag).wait()
    return get_global_rank(group, peer)


def _torch_p2p_functions() -> dict[Any, Any]:
    """torch's own ``isend``/``irecv`` mapped to ours, so P2POp accepts either."""
    functions: dict[Any, Any] = {isend: isend, irecv: irecv}
    if torch.distributed.is_available():
        functions[torch.distributed.isend] = isend
        functions[torch.distributed.irecv] = irecv
    return functions


class P2POp:
    """One operation for :func:`batch_isend_irecv`: ``op`` (``isend`` or ``irecv``), ``tensor``,
    the peer as global rank ``peer`` or group rank ``group_peer``, ``group`` and ``tag``.

    As in torch, ``group`` None means the default group and ``peer``/``group_peer`` both hold
    the peer's rank (global and in-group); ValueError for another ``op`` or a missing peer.
    torch's ``torch.distributed.isend``/``irecv`` are accepted and stand for pyc10d's.
    """

    def __init__(
        self,
        op: Any,
        tensor: torch.Tensor,
        peer: int | None = None,
        group: ProcessGroup | None = None,
        tag: int = 0,
        group_peer: int | None = None,
    ) -> None:
        function = _torch_p2p_functions().get(op)
        if function is None:
            raise ValueError(
                "Invalid ``op``. Expected ``op`` to be of type ``torch.distributed.isend`` or "
                "``torch.distributed.irecv``."
            )
        _check_single_tensor(tensor, "tensor")
        self.op = function
        self.tensor = tensor
        self.tag = tag
        if is_non_member(group):  # nothing to translate: batch_isend_irecv skips it (warning)
            self.group: Any = group
            self.peer = peer
            self.group_peer = group_peer
            return
        self.group = resolve(group)
        what = "dst" if function is isend else "src"
        self.group_peer = _root(self.group, peer, group_peer, what)
        self.peer = get_global_rank(self.group, self.group_peer)

    def __repr__(self) -> str:
        """Like torch's: the op, the group's name, the ranks involved, the tensor's shape/dtype."""
        if is_non_member(self.group):
            name, mine = repr(self.group), -1
        else:
            name, mine = info(self.group).name, get_rank(self.group)
        src, dst = (mine, self.group_peer) if self.op is isend else (self.group_peer, mine)
        return (
            f"P2POp({self.op.__name__} pg={name}, group_src={src}, group_dst={dst}, "
            f"{self.tensor.shape}, {self.tensor.dtype})"
        )


def batch_isend_irecv(p2p_op_list: list[P2POp]) -> list[Work]:
    """Issue every :class:`P2POp` of the list and return their Works (torch's
    ``batch_isend_irecv``); all must use the same group (ValueError otherwise).

    Their order does not matter for deadlock (sends are buffered by the receiver); messages
    between one pair of ranks in one direction match in order, as in torch.
    """
    if not isinstance(p2p_op_list, list) or not all(isinstance(p, P2POp) for p in p2p_op_list):
        raise ValueError(
            "Invalid ``p2p_op_list``. Each op is expected to be of type "
            "``torch.distributed.P2POp``."
        )
    if not p2p_op_list:
        raise ValueError("Invalid ``p2p_op_list``: it is empty.")
    group = p2p_op_list[0].group
    if not all(p.group is group for p in p2p_op_list):
        raise ValueError("All ops need to use the same group.")
    works = []
    for p in p2p_op_list:
        if p.op is isend:
            work = isend(p.tensor, group=group, tag=p.tag, group_dst=p.group_peer)
        else:
            work = irecv(p.tensor, group=group, tag=p.tag, group_src=p.group_peer)
        if work is not None:
            works.append(work)
    return works
