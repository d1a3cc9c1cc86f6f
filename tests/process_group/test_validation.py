"""The collectives' argument checks, without processes: torch's ``*_checks`` inputs and messages.

Each check function runs for world sizes 2 and 3 on the first and the last rank, with the bad
inputs of torch's test_c10d_gloo.py, asserting exception type and message; valid calls pass.
"""

from __future__ import annotations

import re

import pytest
import torch

from pyc10d.core.reduce_op import ReduceOp, make_premul_sum
from pyc10d.process_group import options as o
from pyc10d.process_group import validation as v

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # sparse invariants warning

GROUPS = [(2, 0), (2, 1), (3, 0), (3, 2)]

t1 = torch.zeros([1], dtype=torch.float32)
t2 = torch.zeros([1], dtype=torch.float64)
t3 = torch.zeros([2], dtype=torch.float32)


def sparse(n: int) -> torch.Tensor:
    return torch.sparse_coo_tensor([[0]], [1.0], size=(n,))


def raises(message: str, exc: type[Exception] = RuntimeError):
    return pytest.raises(exc, match=message)


def opts(cls, **fields):
    result = cls()
    for key, value in fields.items():
        setattr(result, key, value)
    return result


@pytest.fixture(params=GROUPS, ids=lambda g: f"ws{g[0]}-rank{g[1]}")
def group(request) -> tuple[int, int]:
    """``(rank, size)``."""
    size, rank = request.param
    return rank, size


# -- broadcast -------------------------------------------------------------------------------
def test_broadcast_checks(group):
    rank, size = group
    B = o.BroadcastOptions
    with raises("ProcessGroupGloo::broadcast: invalid root rank: -1"):
        v.check_broadcast(rank, size, [t1], opts(B, rootRank=-1, rootTensor=0))
    with raises(f"invalid root rank: {size}"):
        v.check_broadcast(rank, size, [t1], opts(B, rootRank=size, rootTensor=0))
    with raises("invalid root tensor: -1"):
        v.check_broadcast(rank, size, [t1], opts(B, rootRank=rank, rootTensor=-1))
    with raises("invalid root tensor: 1"):
        v.check_broadcast(rank, size, [t1], opts(B, rootRank=rank, rootTensor=1))
    with raises("invalid root tensor: 0"):
        v.check_broadcast(rank, size, [], opts(B, rootRank=rank, rootTensor=0))
    with raises(r"invalid tensor type at index 1 \(expected torch.FloatTensor, got torch.Double"):
        v.check_broadcast(rank, size, [t1, t2], opts(B, rootRank=rank, rootTensor=0))
    with raises(r"invalid tensor size at index 1 \(expected \(1\), got \(2\)\)"):
        v.check_broadcast(rank, size, [t1, t3], opts(B, rootRank=rank, rootTensor=0))
    with raises("only supports dense tensors"):
        v.check_broadcast(rank, size, [sparse(2)], opts(B, rootRank=rank))


def test_broadcast_valid(group):
    rank, size = group
    x = [torch.zeros(2), torch.ones(2)]
    for root in range(size):
        v.check_broadcast(rank, size, x, opts(o.BroadcastOptions, rootRank=root, rootTensor=1))
    v.check_broadcast(rank, size, [torch.zeros(2, 2).t()], None)  # non-contiguous is fine
    v.check_broadcast(rank, size, [torch.zeros(0)], None)
    v.check_broadcast(rank, size, [torch.zeros(1, dtype=torch.cfloat)], None)


# -- allreduce -------------------------------------------------------------------------------
def test_allreduce_checks(group):
    rank, size = group
    with raises("ProcessGroupGloo::allreduce: requires non-empty tensor list"):
        v.check_allreduce(rank, size, [], o.AllreduceOptions())
    with raises("invalid tensor type"):
        v.check_allreduce(rank, size, [t1, t2], o.AllreduceOptions())
    with raises("invalid tensor size"):
        v.check_allreduce(rank, size, [t1, t3], o.AllreduceOptions())


def test_sparse_allreduce_checks(group):
    rank, size = group
    s2, s4 = sparse(2), sparse(4)
    with raises("requires non-empty tensor list"):
        v.check_allreduce(rank, size, [], o.AllreduceOptions())
    with raises(r"invalid tensor layout at index 1 \(expected Strided, got Sparse\)"):
        v.check_allreduce(rank, size, [t1, s2], o.AllreduceOptions())
    with raises(r"invalid tensor layout at index 1 \(expected Sparse, got Strided\)"):
        v.check_allreduce(rank, size, [s2, t1], o.AllreduceOptions())
    with raises(r"invalid tensor size at index 1 \(expected \(2\), got \(4\)\)"):
        v.check_allreduce(rank, size, [s2, s4], o.AllreduceOptions())
    for op in [ReduceOp.PRODUCT, ReduceOp.MIN, ReduceOp.MAX, ReduceOp.AVG, ReduceOp.BAND]:
        with raises(
            re.escape(
                "unsupported reduction operation "
                "(allreduce of sparse tensors only works with ReduceOp.SUM)"
            )
        ):
            v.check_allreduce(rank, size, [s4], opts(o.AllreduceOptions, reduceOp=op))
    v.check_allreduce(rank, size, [s4, s4.clone()], o.AllreduceOptions())


def test_allreduce_device_and_layout(group):
    rank, size = group
    with raises("unsupported device type meta"):
        v.check_allreduce(rank, size, [torch.zeros(1, device="meta")], None)
    csr = torch.eye(2).to_sparse_csr()
    with raises("unsupported layout"):
        v.check_allreduce(rank, size, [csr], None)


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
@pytest.mark.parametrize("op", ["PRODUCT", "MIN", "MAX", "BAND", "BOR", "BXOR"])
def test_complex_rejects_order_and_bitwise_ops(group, dtype, op):
    rank, size = group
    x = [torch.zeros(1, dtype=dtype)]
    message = f"does not support ReduceOp.{op} on complex tensors \\(dtype {dtype}\\)"
    with raises(message):
        v.check_allreduce(rank, size, x, opts(o.AllreduceOptions, reduceOp=getattr(ReduceOp, op)))
    with raises(message):
        v.check_reduce(rank, size, x, opts(o.ReduceOptions, reduceOp=getattr(ReduceOp, op)))


@pytest.mark.parametrize("op", ["SUM", "AVG"])
def test_complex_allows_sum_and_avg(group, op):
    rank, size = group
    x = [torch.zeros(1, dtype=torch.cfloat)]
    v.check_allreduce(rank, size, x, opts(o.AllreduceOptions, reduceOp=getattr(ReduceOp, op)))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("op", ["BAND", "BOR", "BXOR"])
def test_bitwise_ops_need_integral_dtype(group, dtype, op):
    rank, size = group
    with raises(f"Cannot use ReduceOp.{op} with non-integral dtype {dtype}"):
        v.check_allreduce(
            rank, size, [torch.zeros(1, dtype=dtype)], opts(o.AllreduceOptions, reduceOp=op_of(op))
        )


def op_of(name: str):
    return getattr(ReduceOp, name)


@pytest.mark.parametrize(
    "dtype", [torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64]
)
def test_integral_dtypes(group, dtype):
    rank, size = group
    x = [torch.zeros(1, dtype=dtype)]
    for op in ["SUM", "PRODUCT", "MIN", "MAX", "BAND", "BOR", "BXOR"]:
        v.check_allreduce(rank, size, x, opts(o.AllreduceOptions, reduceOp=op_of(op)))
    with raises(f"Cannot use ReduceOp.AVG with non-floating-point dtype {dtype}"):
        v.check_allreduce(rank, size, x, opts(o.AllreduceOptions, reduceOp=ReduceOp.AVG))


@pytest.mark.parametrize(
    "dtype", [torch.uint16, torch.uint32, torch.complex32, torch.float8_e4m3fn]
)
def test_unsupported_dtypes(group, dtype):
    rank, size = group
    x = [torch.zeros(1, dtype=dtype)]
    with raises(f"ProcessGroupGloo::allreduce: invalid scalar type {dtype}"):
        v.check_allreduce(rank, size, x, None)
    with raises(f"ProcessGroupGloo::broadcast: invalid scalar type {dtype}"):
        v.check_broadcast(rank, size, x, None)


def test_premul_sum_and_unused(group):
    rank, size = group
    with raises("PREMUL_SUM requires a factor"):
        v.check_allreduce(rank, size, [t1], opts(o.AllreduceOptions, reduceOp=ReduceOp.PREMUL_SUM))
    good = opts(o.AllreduceOptions, reduceOp=make_premul_sum(2.0))
    v.check_allreduce(rank, size, [t1], good)
    with raises("Cannot use ReduceOp.PREMUL_SUM with non-floating-point dtype torch.int64"):
        v.check_allreduce(rank, size, [torch.zeros(1, dtype=torch.int64)], good)
    with raises("unsupported reduction operation ReduceOp.UNUSED"):
        v.check_allreduce(rank, size, [t1], opts(o.AllreduceOptions, reduceOp=ReduceOp.UNUSED))


def test_torch_options_objects_are_read(group):
    rank, size = group
    import torch.distributed as tdist

    topts = tdist.AllreduceOptions()
    topts.reduceOp = tdist.ReduceOp.MAX
    with raises("does not support ReduceOp.MAX on complex tensors"):
        v.check_allreduce(rank, size, [torch.zeros(1, dtype=torch.cfloat)], topts)
    topts.reduceOp = tdist._make_nccl_premul_sum(2.0)
    v.check_allreduce(rank, size, [t1], topts)
    bopts = tdist.BroadcastOptions()
    bopts.rootRank = size
    with raises("invalid root rank"):
        v.check_broadcast(rank, size, [t1], bopts)


def test_allreduce_valid(group):
    rank, size = group
    v.check_allreduce(rank, size, [torch.zeros(3), torch.ones(3)], None)
    v.check_allreduce(rank, size, [torch.tensor(1.0)], None)
    v.check_allreduce(rank, size, [torch.zeros(0)], None)
    v.check_allreduce(rank, size, [torch.zeros(1, dtype=torch.bfloat16)], None)


def test_non_tensor_arguments(group):
    rank, size = group
    with raises("expected a list of tensors", TypeError):
        v.check_allreduce(rank, size, [t1, 3], None)
    with raises("expected a list of tensors", TypeError):
        v.check_allreduce(rank, size, t1, None)
    with raises("expected a list of tensor lists", TypeError):
        v.check_allgather(rank, size, t1, [t1])
    with raises("output must be a tensor", TypeError):
        v.check_allgather_base(rank, size, [t1], t1)


# -- allreduce_coalesced ---------------------------------------------------------------------
def test_allreduce_coalesced_checks(group):
    rank, size = group
    s = torch.sparse_coo_tensor([[0]], [1], size=(1,))
    A = o.AllreduceCoalescedOptions
    with raises("ProcessGroupGloo::allreduce_coalesced: requires non-empty tensor list"):
        v.check_allreduce_coalesced(rank, size, [], A())
    with raises("tensors must all have the same type"):
        v.check_allreduce_coalesced(rank, size, [t1, t2], A())
    with raises("invalid tensor layout at index"):
        v.check_allreduce_coalesced(rank, size, [t1, s], A())
    with raises("unsupported layout"):
        v.check_allreduce_coalesced(rank, size, [s, s.clone()], A())
    with raises("does not support ReduceOp.MIN on complex"):
        v.check_allreduce_coalesced(
            rank, size, [torch.zeros(1, dtype=torch.cfloat)], opts(A, reduceOp=ReduceOp.MIN)
        )
    v.check_allreduce_coalesced(rank, size, [t1, t3], A())  # sizes may differ


# -- reduce ----------------------------------------------------------------------------------
def test_reduce_checks(group):
    rank, size = group
    R = o.ReduceOptions
    with raises("ProcessGroupGloo::reduce: invalid root rank: -1"):
        v.check_reduce(rank, size, [t1], opts(R, rootRank=-1, rootTensor=0))
    with raises(f"invalid root rank: {size}"):
        v.check_reduce(rank, size, [t1], opts(R, rootRank=size, rootTensor=0))
    with raises("invalid root tensor: -1"):
        v.check_reduce(rank, size, [t1], opts(R, rootRank=rank, rootTensor=-1))
    with raises("invalid root tensor: 1"):
        v.check_reduce(rank, size, [t1], opts(R, rootRank=rank, rootTensor=1))
    with raises("invalid root tensor: 0"):
        v.check_reduce(rank, size, [], opts(R, rootRank=rank))
    with raises("requires a single-element tensor list"):
        v.check_reduce(rank, size, [t1, t1], opts(R, rootRank=rank, rootTensor=0))
    with raises("only supports dense tensors"):
        v.check_reduce(rank, size, [sparse(2)], opts(R, rootRank=rank))
    with raises("Cannot use ReduceOp.BAND with non-integral dtype"):
        v.check_reduce(rank, size, [t1], opts(R, reduceOp=ReduceOp.BAND))
    for root in range(size):
        v.check_reduce(rank, size, [t1], opts(R, rootRank=root, reduceOp=ReduceOp.MAX))


# -- allgather -------------------------------------------------------------------------------
def test_allgather_checks(group):
    rank, size = group
    with raises("ProcessGroupGloo::allgather: requires non-empty input tensor list"):
        v.check_allgather(rank, size, [], [])
    with raises("requires input/output tensor lists to have the same length"):
        v.check_allgather(rank, size, [], [t1])
    with raises("requires input/output tensor lists to have the same length"):
        v.check_allgather(rank, size, [[t1] * size, [t1] * size], [t1])
    with raises(
        rf"invalid output tensor list at index 0 \(expected length {size}, got {size - 1}\)"
    ):
        v.check_allgather(rank, size, [[t1] * (size - 1)], [t1])
    with raises("invalid output tensor list"):
        v.check_allgather(rank, size, [[t1] * (size + 1)], [t1])
    with raises(rf"invalid output tensor list at index 1 \(expected length {2 * size}"):
        v.check_allgather(rank, size, [[t1, t1] * size, [t1] * size], [t1, t1])
    with raises("invalid tensor type at index 1"):
        v.check_allgather(rank, size, [[t1, t1] * size, [t1, t1] * size], [t1, t2])
    with raises("invalid tensor size at index 1"):
        v.check_allgather(rank, size, [[t1, t1] * size, [t1, t1] * size], [t1, t3])
    with raises("invalid tensor type at index 1"):
        v.check_allgather(rank, size, [([t1, t2] * size)[:size]], [t1])
    with raises("invalid tensor size at index 1"):
        v.check_allgather(rank, size, [([t1, t3] * size)[:size]], [t1])
    with raises("only supports dense tensors"):
        v.check_allgather(rank, size, [[sparse(2)] * size], [sparse(2)])


def test_allgather_valid(group):
    rank, size = group
    for n in (1, 2, 3):
        inputs = [torch.zeros(2) for _ in range(n)]
        v.check_allgather(rank, size, [[torch.zeros(2)] * (n * size)] * n, inputs)


def test_allgather_coalesced_checks(group):
    rank, size = group
    name = "ProcessGroupGloo::allgather_coalesced"
    with raises(f"{name}: requires non-empty input tensor list"):
        v.check_allgather_coalesced(rank, size, [[t1]] * size, [])
    with raises("output lists should be equal to world size"):
        v.check_allgather_coalesced(rank, size, [[t1]] * (size + 1), [t1])
    with raises("output lists should be equal to world size"):
        v.check_allgather_coalesced(rank, size, [[t1]] * (size - 1), [t1])
    with raises(r"invalid output size: \(expected length 1, got 2\)"):
        v.check_allgather_coalesced(rank, size, [[t1, t1]] * size, [t1])
    with raises(r"invalid size of output tensor at index 0 \(expected length \(1\), got \(2\)\)"):
        v.check_allgather_coalesced(rank, size, [[t3]] * size, [t1])
    with raises(r"invalid tensor type at index 0 \(expected torch.FloatTensor, got torch.Double"):
        v.check_allgather_coalesced(rank, size, [[t2]] * size, [t1])
    with raises("only supports dense tensors"):
        v.check_allgather_coalesced(rank, size, [[sparse(2)]] * size, [sparse(2)])
    v.check_allgather_coalesced(rank, size, [[t1, t3, t2]] * size, [t1, t3, t2])


def test_allgather_base_checks(group):
    rank, size = group
    with raises(r"ProcessGroupGloo::_allgather_base: invalid tensor size: .*got \d+\)"):
        v.check_allgather_base(rank, size, torch.zeros(size + 1), t1)
    with raises("invalid tensor type"):
        v.check_allgather_base(rank, size, torch.zeros(size, dtype=torch.float64), t1)
    with raises("only supports dense tensors"):
        v.check_allgather_base(rank, size, torch.zeros(2 * size), sparse(2))
    with raises("invalid scalar type"):
        v.check_allgather_base(
            rank, size, torch.zeros(size, dtype=torch.uint16), t1.to(torch.uint16)
        )
    v.check_allgather_base(rank, size, torch.zeros(size * 2, 3), torch.zeros(2, 3))
    v.check_allgather_base(rank, size, torch.zeros(size, 2, 3), torch.zeros(2, 3))  # stacked
    v.check_allgather_base(rank, size, torch.zeros(size), torch.tensor(1.0))  # 0-dim input


def test_allgather_into_tensor_coalesced_checks(group):
    rank, size = group
    name = "ProcessGroupGloo::allgather_into_tensor_coalesced"
    with raises(f"{name}: requires non-empty input tensor list"):
        v.check_allgather_into_tensor_coalesced(rank, size, [], [])
    with raises("requires input/output tensor lists to have the same length"):
        v.check_allgather_into_tensor_coalesced(rank, size, [torch.zeros(size)], [t1, t1])
    with raises("invalid tensor size at index 1"):
        v.check_allgather_into_tensor_coalesced(
            rank, size, [torch.zeros(size), torch.zeros(size)], [t1, t3]
        )
    with raises("invalid tensor type at index 0"):
        v.check_allgather_into_tensor_coalesced(rank, size, [torch.zeros(size)], [t2])
    shapes = [(5, 5), (10, 10), (15, 15)]
    v.check_allgather_into_tensor_coalesced(
        rank,
        size,
        [torch.empty(s[0] * size, s[1]) for s in shapes],
        [torch.empty(s) for s in shapes],
    )


# -- gather, scatter -------------------------------------------------------------------------
def test_gather_checks(group):
    rank, size = group
    G = o.GatherOptions
    with raises("ProcessGroupGloo::gather: invalid root rank: -1"):
        v.check_gather(rank, size, [], [t1], opts(G, rootRank=-1))
    with raises(f"invalid root rank: {size}"):
        v.check_gather(rank, size, [], [t1], opts(G, rootRank=size))
    with raises("requires a single-element input tensor list"):
        v.check_gather(rank, size, [], [], opts(G, rootRank=0))
    with raises("requires a single-element input tensor list"):
        v.check_gather(rank, size, [], [t1, t1], opts(G, rootRank=0))
    single = f"requires a single-element output list containing a list with {size} tensors."
    with raises(re.escape(single)):
        v.check_gather(rank, size, [], [t1], opts(G, rootRank=rank))
    with raises("requires a single-element output list"):
        v.check_gather(rank, size, [[t1] * size, [t1] * size], [t1], opts(G, rootRank=rank))
    err = "Incorrect output list size {}. Output list size should be {}"
    with raises(err.format(size - 1, size)):
        v.check_gather(rank, size, [[t1] * (size - 1)], [t1], opts(G, rootRank=rank))
    with raises(err.format(size + 1, size) + ", same as size of the process group."):
        v.check_gather(rank, size, [[t1] * (size + 1)], [t1], opts(G, rootRank=rank))
    with raises("invalid tensor type"):
        v.check_gather(rank, size, [[t2] * size], [t1], opts(G, rootRank=rank))
    with raises("invalid tensor size"):
        v.check_gather(rank, size, [[t3] * size], [t1], opts(G, rootRank=rank))
    other = (rank + 1) % size
    with raises("requires empty output on non-root"):
        v.check_gather(rank, size, [[t1] * size], [t1], opts(G, rootRank=other))
    with raises("requires empty output on non-root"):
        v.check_gather(rank, size, [[]], [t1], opts(G, rootRank=other))
    with raises("only supports dense tensors"):
        v.check_gather(rank, size, [], [sparse(2)], opts(G, rootRank=other))
    v.check_gather(rank, size, [[t1] * size], [t1], opts(G, rootRank=rank))
    v.check_gather(rank, size, [], [t1], opts(G, rootRank=other))


def test_scatter_checks(group):
    rank, size = group
    S = o.ScatterOptions
    with raises("ProcessGroupGloo::scatter: invalid root rank: -1"):
        v.check_scatter(rank, size, [t1], [], opts(S, rootRank=-1))
    with raises(f"invalid root rank: {size}"):
        v.check_scatter(rank, size, [t1], [], opts(S, rootRank=size))
    with raises("requires a single-element output tensor list"):
        v.check_scatter(rank, size, [], [], opts(S, rootRank=0))
    with raises("requires a single-element output tensor list"):
        v.check_scatter(rank, size, [t1, t1], [], opts(S, rootRank=0))
    single = f"requires a single-element input list containing a list with {size} tensors."
    with raises(re.escape(single)):
        v.check_scatter(rank, size, [t1], [], opts(S, rootRank=rank))
    with raises("requires a single-element input list"):
        v.check_scatter(rank, size, [t1], [[t1] * size, [t1] * size], opts(S, rootRank=rank))
    err = "Incorrect input list size {}. Input list size should be {}"
    with raises(err.format(size - 1, size)):
        v.check_scatter(rank, size, [t1], [[t1] * (size - 1)], opts(S, rootRank=rank))
    with raises(err.format(size + 1, size) + ", same as size of the process group."):
        v.check_scatter(rank, size, [t1], [[t1] * (size + 1)], opts(S, rootRank=rank))
    with raises("invalid tensor type"):
        v.check_scatter(rank, size, [t1], [[t2] * size], opts(S, rootRank=rank))
    with raises("invalid tensor size"):
        v.check_scatter(rank, size, [t1], [[t3] * size], opts(S, rootRank=rank))
    other = (rank + 1) % size
    with raises("requires empty input on non-root"):
        v.check_scatter(rank, size, [t1], [[t1] * size], opts(S, rootRank=other))
    with raises("only supports dense tensors"):
        v.check_scatter(rank, size, [sparse(2)], [], opts(S, rootRank=other))
    v.check_scatter(rank, size, [t1], [[t1] * size], opts(S, rootRank=rank))
    v.check_scatter(rank, size, [t1], [], opts(S, rootRank=other))


# -- reduce_scatter --------------------------------------------------------------------------
def test_reduce_scatter_checks(group):
    rank, size = group
    RS = o.ReduceScatterOptions
    with raises("ProcessGroupGloo::reduce_scatter: reduce_scatter only supports 1 output"):
        v.check_reduce_scatter(rank, size, [], [], RS())
    with raises("reduce_scatter only supports 1 output"):
        v.check_reduce_scatter(rank, size, [t1, t1], [[t1] * size] * 2, RS())
    with raises("requires input/output tensor lists to have the same length"):
        v.check_reduce_scatter(rank, size, [t1], [[t1] * size] * 2, RS())
    with raises(f"invalid input tensor list size, must be world size \\(expected {size}, got"):
        v.check_reduce_scatter(rank, size, [t1], [[t1] * (size - 1)], RS())
    with raises("invalid input tensor list size, must be world size"):
        v.check_reduce_scatter(rank, size, [t1], [[t1] * (size + 1)], RS())
    with raises("invalid tensor type at index 0"):
        v.check_reduce_scatter(rank, size, [t1], [[t2] * size], RS())
    with raises(f"invalid tensor size at index {rank}"):
        v.check_reduce_scatter(rank, size, [t1], [[t3] * size], RS())
    with raises("only supports dense tensors"):
        v.check_reduce_scatter(rank, size, [sparse(2)], [[sparse(2)] * size], RS())
    with raises("does not support ReduceOp.MAX on complex"):
        c = torch.zeros(1, dtype=torch.cfloat)
        v.check_reduce_scatter(rank, size, [c], [[c] * size], opts(RS, reduceOp=ReduceOp.MAX))


def test_reduce_scatter_variable_sizes(group):
    # seed's test_reduce_scatter: inputs[i] has i elements, this rank's output has ``rank``
    rank, size = group
    inputs = [torch.rand(i) for i in range(size)]
    v.check_reduce_scatter(rank, size, [torch.empty(rank)], [inputs], o.ReduceScatterOptions())


def test_reduce_scatter_base_checks(group):
    rank, size = group
    RS = o.ReduceScatterOptions
    with raises("ProcessGroupGloo::_reduce_scatter_base: invalid tensor size"):
        v.check_reduce_scatter_base(rank, size, t1, torch.zeros(size + 1), RS())
    with raises("invalid tensor type"):
        v.check_reduce_scatter_base(rank, size, t1, torch.zeros(size, dtype=torch.float64), RS())
    with raises("Cannot use ReduceOp.BXOR with non-integral dtype"):
        v.check_reduce_scatter_base(
            rank, size, t1, torch.zeros(size), opts(RS, reduceOp=ReduceOp.BXOR)
        )
    out_shape = (20, 20)
    v.check_reduce_scatter_base(
        rank, size, torch.empty(out_shape), torch.rand(out_shape[0] * size, 20), RS()
    )
    v.check_reduce_scatter_base(rank, size, torch.empty(()), torch.rand(size), RS())


def test_reduce_scatter_tensor_coalesced_checks(group):
    rank, size = group
    RS = o.ReduceScatterOptions
    name = "ProcessGroupGloo::reduce_scatter_tensor_coalesced"
    with raises(f"{name}: requires non-empty input tensor list"):
        v.check_reduce_scatter_tensor_coalesced(rank, size, [], [], RS())
    with raises("requires input/output tensor lists to have the same length"):
        v.check_reduce_scatter_tensor_coalesced(rank, size, [t1, t1], [torch.zeros(size)], RS())
    with raises("invalid tensor size at index 0"):
        v.check_reduce_scatter_tensor_coalesced(rank, size, [t1], [torch.zeros(size + 1)], RS())
    with raises("invalid tensor type at index 0"):
        v.check_reduce_scatter_tensor_coalesced(
            rank, size, [t1], [torch.zeros(size, dtype=torch.float64)], RS()
        )
    shapes = [(5, 5), (10, 10), (15, 15)]
    v.check_reduce_scatter_tensor_coalesced(
        rank,
        size,
        [torch.empty(s) for s in shapes],
        [torch.rand(s[0] * size, s[1]) for s in shapes],
    )


# -- alltoall --------------------------------------------------------------------------------
def test_alltoall_checks(group):
    rank, size = group
    A = o.AllToAllOptions()
    name = "ProcessGroupGloo::alltoall"
    with raises(f"{name}: output tensor list size {size + 1} does not match world size {size}"):
        v.check_alltoall(rank, size, [t1] * (size + 1), [t1] * size, A)
    with raises(f"input tensor list size {size - 1} does not match world size {size}"):
        v.check_alltoall(rank, size, [t1] * size, [t1] * (size - 1), A)
    with raises("input and output tensors must have the same type"):
        v.check_alltoall(rank, size, [t2] * size, [t1] * size, A)
    with raises("invalid tensor type at index 1"):
        v.check_alltoall(rank, size, [t1] * size, [t1] + [t2] * (size - 1), A)
    with raises("only supports dense tensors"):
        v.check_alltoall(rank, size, [sparse(1)] * size, [sparse(1)] * size, A)
    v.check_alltoall(rank, size, [t1] * size, [t1] * size, A)
    # sizes may differ, but the block a rank sends itself must fit its own output
    outputs = [t3 if i == rank else torch.zeros(i) for i in range(size)]
    v.check_alltoall(rank, size, outputs, [t3] * size, A)
    own = f"{name}: invalid tensor size at index {rank} \\(expected \\(2\\), got \\(1\\)\\)"
    with pytest.raises(v.RankArgumentError, match=own):  # only this rank can see it: refused
        v.check_alltoall(rank, size, [t1] * size, [t3] * size, A)


def test_alltoall_base_checks(group):
    rank, size = group
    A = o.AllToAllOptions()
    z = torch.zeros
    name = "ProcessGroupGloo::alltoall_base"
    with raises(f"{name}: input and output tensors must have the same type"):
        v.check_alltoall_base(rank, size, z(size, dtype=torch.float64), z(size), [], [], A)
    with raises("Tensor's dim 0 does not divide equally across group size"):
        v.check_alltoall_base(rank, size, z(size + 1), z(size), [], [], A)
    with raises("Tensor's dim 0 does not divide equally across group size"):
        v.check_alltoall_base(rank, size, z(size), z(size + 1), [], [], A)
    with raises("Number of tensor splits not equal to group size"):
        v.check_alltoall_base(rank, size, z(size), z(size), [1] * (size + 1), [], A)
    with raises("Number of tensor splits not equal to group size"):
        v.check_alltoall_base(rank, size, z(size), z(size), [], [1] * (size - 1), A)
    with raises("Split sizes doesn't match total dim 0 size"):
        v.check_alltoall_base(rank, size, z(size), z(size), [2] * size, [], A)
    with raises("Split sizes doesn't match total dim 0 size"):
        v.check_alltoall_base(rank, size, z(size), z(size), [], [2] * size, A)
    with raises("Split sizes must be non-negative"):
        v.check_alltoall_base(rank, size, z(size), z(size), [], [-1, 2] + [1] * (size - 2), A)
    with raises("at least one dimension"):
        v.check_alltoall_base(rank, size, z(()), z(()), [], [], A)
    with raises(r"same number of elements per dim-0 row \(input 2, output 3\)"):
        v.check_alltoall_base(rank, size, z(size, 3), z(size, 2), [], [], A)
    with raises("must have the same size without split sizes"):
        v.check_alltoall_base(rank, size, z(2 * size), z(size), [], [], A)
    v.check_alltoall_base(rank, size, z(size, 2), z(size, 2), [], [], A)
    v.check_alltoall_base(rank, size, z(2 * size), z(size), [2] * size, [], A)
    v.check_alltoall_base(rank, size, z(0), z(size), [0] * size, [1] * size, A)


# -- send / recv -----------------------------------------------------------------------------
def test_send_recv_checks(group):
    rank, size = group
    other = (rank + 1) % size
    with raises("ProcessGroupGloo::send takes a single tensor"):
        v.check_send(rank, size, [t1, t1], other, 0)
    with raises("ProcessGroupGloo::send takes a single tensor"):
        v.check_send(rank, size, [], other, 0)
    with raises("ProcessGroupGloo::recv takes a single tensor"):
        v.check_recv(rank, size, [t1, t1], other, 0)
    with raises("ProcessGroupGloo::recv_anysource takes a single tensor"):
        v.check_recv_anysource(rank, size, [], 0)
    with raises("input tensor has to be contiguous"):
        v.check_send(rank, size, [torch.zeros(2, 2).t()], other, 0)
    with raises("output tensor has to be contiguous"):
        v.check_recv(rank, size, [torch.zeros(2, 2).t()], other, 0)
    with raises("has to be contiguous"):
        v.check_send(rank, size, [sparse(2)], other, 0)
    with raises(f"invalid destination rank: {size}"):
        v.check_send(rank, size, [t1], size, 0)
    with raises("invalid destination rank: -1"):
        v.check_send(rank, size, [t1], -1, 0)
    with raises("invalid source rank: -1"):
        v.check_recv(rank, size, [t1], -1, 0)
    with raises("destination rank should not be the same as the rank of the current process"):
        v.check_send(rank, size, [t1], rank, 0)
    with raises("source rank should not be the same"):
        v.check_recv(rank, size, [t1], rank, 0)
    with raises("Tag must be nonnegative"):
        v.check_send(rank, size, [t1], other, -1)
    with raises("too large"):
        v.check_recv(rank, size, [t1], other, v.MAX_TAG + 1)
    with raises("tag must be an int", TypeError):
        v.check_send(rank, size, [t1], other, 1.0)
    v.check_send(rank, size, [t1], other, 7)
    v.check_recv(rank, size, [t1], other, v.MAX_TAG)
    v.check_recv_anysource(rank, size, [t1], 3)


# -- helpers ---------------------------------------------------------------------------------
def test_helpers():
    assert v.format_sizes(()) == "()" and v.format_sizes((1,)) == "(1)"
    assert v.format_sizes((2, 3)) == "(2, 3)"
    assert v.type_name(t1) == "torch.FloatTensor"
    assert v.same_type(t1, t3) and not v.same_type(t1, t2) and not v.same_type(sparse(1), t1)
    with raises("ProcessGroupGloo::x: boom"):
        v.fail("x", "boom")
    with raises("invalid root rank: 2"):
        v.check_root_rank("x", 2, 2)
    v.check_root_rank("x", 1, 2)
    v.check_dtype_supported("x", torch.int16, ReduceOp.BAND)
    v.check_same_type_and_size("x", [])
    assert {torch.bool, torch.bfloat16, torch.complex128} <= v.SUPPORTED_DTYPES
