"""Kernel choice on the fast path: which kernel each row of a pass takes when some rows
are pinned (``linear.Rows``), and which quant a device can run."""

import torch

from omax.engine.linear import Rows

CPU = torch.device("cpu")


def _plan(rows: Rows, n: int, small: int, has_packed: bool = True):
    packed, free, groups = rows.plan(n, small, has_packed, CPU)
    return (
        None if packed is None else packed.tolist(),
        None if free is None else free.tolist(),
        groups,
    )


def test_free_rows_follow_their_own_count_pinned_rows_do_not():
    rows = Rows([0, 2], [(5, 3)])
    # 3 free rows fit the packed kernel's range: they join the pinned decode rows
    assert _plan(rows, 8, small=8) == ([0, 1, 2, 3, 4], None, [(5, 3)])
    # 12 free rows do not: they take one dense call; the pins stay where they were
    assert _plan(rows, 17, small=8) == ([0, 2], [1, 3, 4, *range(8, 17)], [(5, 3)])


def test_without_a_packed_kernel_each_pinned_decode_row_runs_alone():
    rows = Rows([1, 3])
    assert _plan(rows, 4, small=0, has_packed=False) == (None, [0, 2], [(1, 1), (3, 1)])


def test_plans_are_cached_per_shape():
    rows = Rows([0])
    assert rows.plan(4, 8, True, CPU) is rows.plan(4, 8, True, CPU)
