"""tests/gpu: what only a CUDA device can check (compiled kernels, CUDA memory, fp16/bf16 DeepSpeed steps).

Collected only where `torch.cuda.is_available()`; elsewhere the directory is one skipped entry with the
reason. Run them with compiled Triton kernels: `make gpu-check`, or `TRITON_INTERPRET=0 pytest tests/gpu`
(tests/conftest.py turns Triton's interpreter on for the CPU suite, and Triton reads that once per process,
when the kernels are first imported).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
NO_CUDA = None if torch.cuda.is_available() else "tests/gpu needs CUDA: torch.cuda.is_available() is False"


class _NoCuda(pytest.File):
    """Stands for the whole directory when there is no CUDA: one skipped entry, one reason."""

    def collect(self) -> list[pytest.Item]:
        pytest.skip(NO_CUDA)


def pytest_ignore_collect(collection_path: Path) -> bool | None:
    """Without CUDA the test modules are not even imported (they would build CUDA tensors at import)."""
    if NO_CUDA and collection_path.parent == HERE and collection_path.name.startswith("test_"):
        return True
    return None


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if NO_CUDA and file_path == HERE / "conftest.py":
        return _NoCuda.from_parent(parent, path=file_path)
    return None


@pytest.fixture(autouse=True)
def _needs_cuda() -> None:
    """A test file named on the command line is collected despite the ignore: same skip, same reason."""
    if NO_CUDA:
        pytest.skip(NO_CUDA)


@pytest.fixture(scope="session")
def compiled_triton() -> None:
    """Tests of the Triton path must run the compiled kernels, not the interpreter on copies of the tensors."""
    import triton

    if triton.knobs.runtime.interpret:
        pytest.fail(
            "Triton runs interpreted in this process (TRITON_INTERPRET=1, which tests/conftest.py sets for the "
            "CPU suite): run `TRITON_INTERPRET=0 pytest tests/gpu` or `make gpu-check`"
        )
