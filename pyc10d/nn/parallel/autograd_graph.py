"""What DDP does with the autograd graph: find output tensors, reach parameters, the DDP sink.

``find_tensors`` mirrors torch's ``_find_tensors`` (tensors inside lists, tuples, dicts and
dataclasses); ``reachable_nodes`` is the traversal of the C++ ``Reducer::search_unused_parameters``;
``DDPSink`` is torch's ``_DDPSink``: outputs pass through it so that an output left out of the
loss still reaches the Reducer (as an undefined gradient), and so that a static graph's first
backward can queue the delayed allreduce.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import fields, is_dataclass
from typing import Any

import torch
from torch.autograd import Function, Variable
from torch.utils._pytree import tree_flatten, tree_unflatten


def find_tensors(obj: Any) -> Iterator[torch.Tensor]:
    """Every tensor in ``obj``, looking inside lists, tuples, dicts and dataclasses."""
    if isinstance(obj, torch.Tensor):
        return iter([obj])
    if isinstance(obj, (list, tuple)):
        return itertools.chain.from_iterable(map(find_tensors, obj))
    if isinstance(obj, dict):
        return itertools.chain.from_iterable(map(find_tensors, obj.values()))
    if is_dataclass(obj) and not isinstance(obj, type):
        return itertools.chain.from_iterable(
            find_tensors(getattr(obj, f.name)) for f in fields(obj)
        )
    return iter([])


def reachable_nodes(outputs: Iterable[torch.Tensor]) -> set:
    """The autograd nodes reachable from ``outputs``' ``grad_fn`` (theirs excluded, as in torch)."""
    seen: set = set()
    queue = [t.grad_fn for t in outputs if t.grad_fn is not None]
    while queue:
        node = queue.pop()
        for next_node, _ in node.next_functions:
            if next_node is not None and next_node not in seen:
                seen.add(next_node)
                queue.append(next_node)
    return seen


class DDPSink(Function):
    """Identity on DDP's outputs (cloned, like torch); its backward may queue a delayed allreduce.

    ``set_materialize_grads(False)`` keeps missing output gradients undefined instead of zeros.
    """

    @staticmethod
    def forward(ctx: Any, ddp_ref: weakref.ref, *inputs: Any) -> Any:  # type: ignore[override]
        """Return the inputs (tensors cloned when the DDP module asks for it)."""
        ctx.set_materialize_grads(False)
        ctx.ddp_ref = ddp_ref
        ddp = ddp_ref()
        if ddp is not None and ddp._ddp_sink_clone:
            return tuple(t.clone() if isinstance(t, torch.Tensor) else t for t in inputs)
        return inputs

    @staticmethod
    def backward(ctx: Any, *grad_outputs: Any) -> Any:  # type: ignore[override]
        """Queue a static graph's first-iteration allreduce; pass the gradients on."""
        ddp = ctx.ddp_ref()
        if ddp is not None and ddp.static_graph and not ddp._static_graph_delay_allreduce_enqueued:
            Variable._execution_engine.queue_callback(ddp.reducer._delay_all_reduce)
            ddp._static_graph_delay_allreduce_enqueued = True
        return (None, *grad_outputs)


def pass_through_sink(ddp: Any, output: Any) -> Any:
    """``output`` with every tensor that has a ``grad_fn`` replaced by its DDPSink twin."""
    leaves, spec = tree_flatten(output)
    if not any(isinstance(leaf, torch.Tensor) and leaf.grad_fn is not None for leaf in leaves):
        return output
    passed = DDPSink.apply(weakref.ref(ddp), *leaves)
    merged = [
        new if isinstance(leaf, torch.Tensor) and leaf.grad_fn is not None else leaf
        for leaf, new in zip(leaves, passed, strict=True)
    ]
    return tree_unflatten(merged, spec)
