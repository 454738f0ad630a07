"""CUDA memory of one training step (`measure_cuda_step`) vs the CPU accounting (`account_step`), paper Table 2.

Every distinct row of Table 2 (paper rows, this project's model, full fine-tuning, the frozen probe) at the
paper's batch, amp precision (the paper's recipe) and flash attention (what a GPU runs). A row fits when
its step runs; a row that runs out of memory passes only if the accounting predicted it would not fit.
"""

from __future__ import annotations

import gc

import pytest
import torch

from s4v.memory.step import GiB, account_step, measure_cuda_step
from s4v.memory.tables import TABLES, Row
from s4v.memory.workloads import workload

PRECISION, ATTENTION = "amp", "flash"
TOLERANCE = 0.10


def _distinct_rows() -> dict[str, Row]:
    rows: dict[str, Row] = {}
    for row in TABLES["2"]:
        rows.setdefault(f"{row.spec.backbone}-{row.spec.label}", row)
    return rows


ROWS = _distinct_rows()


@pytest.mark.parametrize("key", ROWS)
def test_cuda_peak_matches_cpu_accounting(key: str) -> None:
    row = ROWS[key]
    accounted = account_step(workload(row.spec), PRECISION, ATTENTION).peak
    total = torch.cuda.get_device_properties(0).total_memory
    try:
        measured = measure_cuda_step(workload(row.spec), PRECISION, ATTENTION).peak
    except torch.cuda.OutOfMemoryError:
        measured = None
    finally:
        gc.collect()
        torch.cuda.empty_cache()
    if measured is None:
        assert accounted > 0.9 * total, (
            f"{row.group} {row.name}: out of memory on a {total / GiB:.0f} GiB GPU although the accounting "
            f"says {accounted / GiB:.2f} GiB"
        )
        return
    deviation = accounted / measured - 1
    assert abs(deviation) <= TOLERANCE, (
        f"{row.group} {row.name}: CPU accounting {accounted / GiB:.2f} GiB vs CUDA {measured / GiB:.2f} GiB "
        f"({100 * deviation:+.1f} %)"
    )
