"""ReduceOp: torch's ReduceOpTest behaviour (the option classes are in tests/process_group)."""

from __future__ import annotations

import copy
import operator
import pickle

import pytest
import torch
import torch.distributed as tdist

from pyc10d.core.reduce_op import (
    RedOpType,
    ReduceOp,
    make_premul_sum,
    reduce_op_of,
    to_reduce_op,
)

MEMBERS = [
    ReduceOp.SUM,
    ReduceOp.AVG,
    ReduceOp.PRODUCT,
    ReduceOp.MIN,
    ReduceOp.MAX,
    ReduceOp.BAND,
    ReduceOp.BOR,
    ReduceOp.BXOR,
]
SCALES = [torch.tensor(1.0), 2.0]


# -- ReduceOp --------------------------------------------------------------------------------
def test_members_numbered_like_torch():
    for name, torch_member in tdist.ReduceOp.RedOpType.__members__.items():
        assert int(getattr(ReduceOp, name)) == int(torch_member)
    assert int(ReduceOp.UNUSED) == 9
    assert ReduceOp.RedOpType is RedOpType
    assert str(ReduceOp.MAX) == "RedOpType.MAX" == f"{ReduceOp.MAX}"


@pytest.mark.parametrize("op", MEMBERS)
def test_op_isinstance_of_reduceop(op):
    assert isinstance(op, ReduceOp)
    assert isinstance(ReduceOp(op), ReduceOp)
    assert not isinstance(int(op), ReduceOp)


@pytest.mark.parametrize("scale", SCALES)
def test_premul_sum_isinstance_and_factor(scale):
    op = make_premul_sum(scale)
    assert isinstance(op, ReduceOp)
    assert op.op == ReduceOp.PREMUL_SUM and op == ReduceOp.PREMUL_SUM
    assert op.factor is scale or op.factor == scale


def test_premul_sum_factor_validation():
    assert make_premul_sum(3).factor == 3.0
    with pytest.raises(RuntimeError, match="one element"):
        make_premul_sum(torch.tensor([1.0, 2.0]))
    for bad in ("x", None, True):
        with pytest.raises(TypeError, match="factor"):
            make_premul_sum(bad)
    with pytest.raises(RuntimeError, match="Only PREMUL_SUM supports accessing factor"):
        _ = ReduceOp(ReduceOp.SUM).factor


@pytest.mark.parametrize("op", MEMBERS)
def test_reduceop_copyable(op):
    assert copy.copy(op) == op
    assert copy.deepcopy(op) == op
    assert copy.copy(ReduceOp(op)) == op
    assert copy.deepcopy(ReduceOp(op)) == op


@pytest.mark.parametrize("scale", SCALES)
def test_premul_sum_copyable_and_picklable(scale):
    op = make_premul_sum(scale)
    for clone in (copy.copy(op), copy.deepcopy(op), pickle.loads(pickle.dumps(op))):
        assert clone == op
        assert float(clone.factor) == float(scale)


@pytest.mark.parametrize("op", MEMBERS)
@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_reduceop_pickle(op, protocol):
    assert pickle.loads(pickle.dumps(op, protocol)) is op
    orig = ReduceOp(op)
    clone = pickle.loads(pickle.dumps(orig, protocol))
    assert clone == orig and type(clone) is ReduceOp


@pytest.mark.parametrize("op", MEMBERS)
def test_reduceop_equal(op):
    not_reduceop = "abc"
    obj = ReduceOp(op)
    assert obj == obj
    assert obj == op
    # torch 2.13: the member's own __eq__ says False for an op object (ReduceOpTest asserts
    # ``assertNotEqual(reduce_op, reduce_op_obj)``; its TODO wants it changed some day)
    assert operator.eq(op, obj) is False and operator.ne(op, obj) is True
    assert operator.ne(obj, op) is False
    assert obj != not_reduceop and op != not_reduceop
    assert None not in (op, obj)
    assert not_reduceop not in (op, obj)
    assert obj == ReduceOp(op) and obj != ReduceOp(RedOpType((int(op) + 1) % 8))
    assert obj != int(op)  # an op object is not a number (torch: same)


@pytest.mark.parametrize("op", MEMBERS)
def test_reduceop_hash(op):
    assert hash(ReduceOp(op)) == hash(op) == int(op)
    assert len({ReduceOp(op), copy.deepcopy(ReduceOp(op))}) == 1
    assert {ReduceOp(op): 1}[op] == 1  # the stored op object's __eq__ matches the member
    # the stored member's __eq__ refuses the op object, so, as in torch, these differ
    assert len({op, ReduceOp(op)}) == 2
    assert ReduceOp(op) not in {op: 1}


def test_premul_sums_compare_by_kind_like_torch():
    assert make_premul_sum(2.0) == make_premul_sum(3.0)
    assert make_premul_sum(2.0) != ReduceOp.SUM


def test_constructor_rejects_non_ops():
    for bad in (0, "sum", None, 1.5):
        with pytest.raises(TypeError, match="expected a ReduceOp"):
            ReduceOp(bad)
    with pytest.raises(TypeError):
        ReduceOp()  # type: ignore[call-arg]


def test_constructor_copies_op_objects():
    premul = make_premul_sum(4.0)
    again = ReduceOp(premul)
    assert again is not premul and again.factor == 4.0


@pytest.mark.parametrize("name", [m.name for m in MEMBERS] + ["PREMUL_SUM"])
def test_torch_members_and_objects_map_to_ours(name):
    torch_member = getattr(tdist.ReduceOp, name)
    ours = getattr(ReduceOp, name)
    assert reduce_op_of(torch_member) is ours
    if name != "PREMUL_SUM":
        assert reduce_op_of(tdist.ReduceOp(torch_member)) is ours
        assert ReduceOp(torch_member) == ours
        assert ReduceOp(tdist.ReduceOp(torch_member)) == ours
        assert ReduceOp(ours) == tdist.ReduceOp(torch_member)


def test_torch_premul_sum_keeps_factor():
    ours = to_reduce_op(tdist._make_nccl_premul_sum(2.5))
    assert ours.op is ReduceOp.PREMUL_SUM and ours.factor == 2.5
    tensor = to_reduce_op(tdist._make_nccl_premul_sum(torch.tensor(3.0)))
    assert torch.equal(tensor.factor, torch.tensor(3.0))


def test_reduce_op_of_and_to_reduce_op():
    obj = ReduceOp(ReduceOp.MIN)
    assert reduce_op_of(ReduceOp.MIN) is ReduceOp.MIN
    assert reduce_op_of(obj) is ReduceOp.MIN
    assert to_reduce_op(obj) is obj
    assert to_reduce_op(ReduceOp.BOR) == ReduceOp.BOR
    for bad in (3, "max", object()):
        with pytest.raises(TypeError, match="expected a ReduceOp"):
            reduce_op_of(bad)
        with pytest.raises(TypeError, match="expected a ReduceOp"):
            to_reduce_op(bad)


# -- torch 2.13 parity (ReduceOpTest.test_reduceop_equal and the comparisons around it) -------
def _comparisons(ns, name):
    """Every comparison ReduceOpTest makes (and a few more), for one member of ``ns.ReduceOp``."""
    red = ns.ReduceOp
    op = getattr(red, name)
    obj = red(op)
    other = red(red.SUM if name != "SUM" else red.AVG)
    return {
        "obj == obj": obj == obj,
        "obj == op": obj == op,
        "op == obj": op == obj,
        "op != obj": op != obj,
        "obj != op": obj != op,
        "obj == fresh obj": obj == red(op),
        "obj == other": obj == other,
        "obj != other": obj != other,
        "op == 'abc'": op == "abc",
        "obj == 'abc'": obj == "abc",
        "obj != 'abc'": obj != "abc",
        "op == int": op == int(op),
        "obj == int": obj == int(op),
        "op == True": op == True,  # noqa: E712
        "None in": None in (op, obj),
        "'abc' in": "abc" in (op, obj),
        "obj in [op]": obj in [op],
        "op in [obj]": op in [obj],
        "hash": (hash(op), hash(obj)),
        "set size": len({op, obj}),
        "dict by member": {op: 1}.get(obj),
        "dict by obj": {obj: 1}.get(op),
    }


@pytest.mark.parametrize("name", [m.name for m in MEMBERS])
def test_comparisons_match_torch(name):
    import pyc10d

    assert _comparisons(pyc10d, name) == _comparisons(tdist, name)


@pytest.mark.parametrize("scale", SCALES)
def test_premul_sum_member_is_callable_like_torch(scale):
    op = ReduceOp.PREMUL_SUM(scale)
    assert isinstance(op, ReduceOp) and op.op is ReduceOp.PREMUL_SUM
    assert op.factor is scale or op.factor == scale
    assert op == ReduceOp.PREMUL_SUM and operator.eq(ReduceOp.PREMUL_SUM, op) is False
    with pytest.raises(RuntimeError, match="Only PREMUL_SUM supports calling with a factor"):
        ReduceOp.SUM(scale)


@pytest.mark.parametrize("scale", SCALES)
def test_module_make_nccl_premul_sum(scale):
    import pyc10d

    op = pyc10d._make_nccl_premul_sum(scale)
    assert isinstance(op, pyc10d.ReduceOp) and type(op) is ReduceOp
    assert op.factor is scale or op.factor == scale
    for clone in (copy.copy(op), copy.deepcopy(op), pickle.loads(pickle.dumps(op))):
        assert clone == op
