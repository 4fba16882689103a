"""Shared pytest set-up: GPU-only tests skip cleanly without CUDA, and without CUDA the
Triton kernels run through Triton's interpreter on CPU tensors (CI).

NOTE: `TRITON_INTERPRET` is read when a kernel is decorated, so it is set here, in the root
conftest, before any test module (or anything it imports) can import a kernel module.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
