"""The texts of the Reducer's errors, worded as torch's C++ Reducer words them."""

from __future__ import annotations

from collections.abc import Sequence

_OUTPUTS_NOT_USED = "making sure all `forward` function outputs participate in calculating loss. "
_DDP_BUG = (
    "\nIf you already have done the above, then the distributed data parallel module wasn't "
    "able to locate the output tensors in the return value of your module's `forward` "
    "function. Please include the loss function and the structure of the return value of "
    "`forward` of your module when reporting this issue (e.g. list, dict, iterable)."
)


def prior_reduction_not_finished(
    rank: int,
    static_graph: bool,
    find_unused_parameters: bool,
    unmarked_indices: Sequence[int],
    unmarked_names: Sequence[str] | None,
) -> str:
    """The error for an iteration that starts before the previous one's reduction finished."""
    base = (
        "Expected to have finished reduction in the prior iteration before starting a new one. "
        "This error indicates that your module has parameters that were not used in producing "
        "loss. "
    )
    if static_graph:
        base = (
            "Expected to have finished reduction in the prior iteration before starting a new "
            "one. This error indicates that your training graph has changed in this iteration, "
            "e.g., one parameter is used in first iteration, but then got unused in the second "
            "iteration. this is not compatible with static_graph set to True."
        )
    elif not find_unused_parameters:
        base += (
            "You can enable unused parameter detection by passing the keyword argument "
            "`find_unused_parameters=True` to `torch.nn.parallel.DistributedDataParallel`, and "
            "by \n" + _OUTPUTS_NOT_USED + _DDP_BUG
        )
    else:
        base += (
            "Since `find_unused_parameters=True` is enabled, this likely  means that not all "
            "`forward` outputs participate in computing loss. You can fix this by "
            + _OUTPUTS_NOT_USED
            + _DDP_BUG
        )
    indices = " ".join(str(i) for i in unmarked_indices)
    indices_info = f"\nParameter indices which did not receive grad for rank {rank}: {indices}"
    if unmarked_names:
        names = ", ".join(unmarked_names)
        return (
            base
            + f"\nParameters which did not receive grad for rank {rank}: {names}"
            + (indices_info)
        )
    return (
        base
        + indices_info
        + "\n In addition, you can set the environment variable TORCH_DISTRIBUTED_DEBUG to "
        "either INFO or DETAIL to print out information about which particular parameters did "
        "not receive gradient on this rank as part of this error"
    )


def marked_twice(index: int, name: str | None, has_marked_unused_parameters: bool) -> str:
    """The error for a parameter whose gradient hook fired twice in one iteration."""
    info = (
        f"Parameter at index {index}"
        + (f" with name {name}" if name else "")
        + " has been marked as ready twice. This means that multiple autograd engine  hooks "
        "have fired for this particular parameter during this iteration."
    )
    if not name:
        info += (
            " You can set the environment variable TORCH_DISTRIBUTED_DEBUG to either INFO or "
            "DETAIL to print parameter names for further debugging."
        )
    message = (
        "Expected to mark a variable ready only once. This error is caused by one of the "
        "following reasons: 1) Use of a module parameter outside the `forward` function. Please "
        "make sure model parameters are not shared across multiple concurrent forward-backward "
        "passes. or try to use _set_static_graph() as a workaround if this module graph does "
        "not change during training loop.2) Reused parameters in multiple reentrant backward "
        "passes. For example, if you use multiple `checkpoint` functions to wrap the same part "
        "of your model, it would result in the same set of parameters been used by different "
        "reentrant backward passes multiple times, and hence marking a variable ready multiple "
        "times. DDP does not support such use cases in default. You can try to use "
        "_set_static_graph() as a workaround if your module graph does not change over "
        "iterations.\n" + info
    )
    if has_marked_unused_parameters:
        message += (
            "3) Incorrect unused parameter detection. The return value of the `forward` "
            "function is inspected by the distributed data parallel wrapper to figure out if any "
            "of the module's parameters went unused. For unused parameters, DDP would not expect "
            "gradients from then. However, if an unused parameter becomes part of the autograd "
            "graph at a later point in time (e.g., in a reentrant backward when using "
            "`checkpoint`), the gradient will show up unexpectedly. If all parameters in the "
            "model participate in the backward pass, you can disable unused parameter detection "
            "by passing the keyword argument `find_unused_parameters=False` to "
            "`torch.nn.parallel.DistributedDataParallel`. If unused parameters in the model do "
            "not change over iterations, You can try to use _set_static_graph() as a workaround "
            "if this module graph does not change during training loop."
        )
    return message


GRAPH_CHANGED = (
    "Your training graph has changed in this iteration, e.g., one parameter is unused in first "
    "iteration, but then got used in the second iteration. this is not compatible with "
    "static_graph set to True."
)

NOT_BUCKET_VIEW = (
    "Detected at least one parameter gradient is not the expected DDP bucket view with "
    "gradient_as_bucket_view=True. This may happen (for example) if multiple allreduce hooks "
    "were registered onto the same parameter. If you hit this error, please file an issue with "
    "a minimal repro."
)

UNDEFINED_BUT_REDUCED = (
    "Encountered gradient which is undefined, but still allreduced by DDP reducer. This "
    "indicates a bug in DDP implementation, please report a bug with a repro to PyTorch."
)

HOOK_ONCE = "register_comm_hook or register_builtin_comm_hook can only be called once."


def not_a_future(result: object) -> str:
    """The error for a communication hook that returned something other than a Future."""
    kind = type(result)
    return (
        f"Unable to cast Python instance of type {kind} to torch.futures.Future. DDP "
        "communication hook's callback must return a torch.futures.Future object, but got "
        f"{kind.__module__}.{kind.__qualname__}"
    )
