"""DESIGN.md's layering: the router and the engine's pure core never import torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

TORCH_FREE = [
    "kvferry",
    "kvferry.tokenizer",
    "kvferry.client",
    "kvferry.local_cluster",
    "kvferry.services.router.server",
    "kvferry.services.router.placement",
    "kvferry.services.router.registry",
    "kvferry.services.engine.scheduler",
    "kvferry.services.engine.kv_cache_manager",
    "kvferry.services.engine.block_pool",
    "kvferry.services.engine.block_hash",
]


@pytest.mark.parametrize("module", TORCH_FREE)
def test_module_does_not_import_torch(module: str, tmp_path: Path) -> None:
    code = f"import sys, {module}; sys.exit('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True)
    assert result.returncode == 0, f"{module} pulls in torch: {result.stderr.decode()[-500:]}"
