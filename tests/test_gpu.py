"""On a machine with a GPU: a short run there agrees with the same run on the CPU.

Runs go to the GPU in the wide layout (flows merged, levels padded) with float32 matrix products
at full precision (``highest``: no TF32), so the two devices differ only by the order of
float32 reductions. Skipped where jax sees no GPU (the rest of the suite pins the CPU).
"""

import os
import subprocess
import sys

import numpy as np
import pytest
from clitools import BIN

from bptt_cli import results

GRID = """
problem = "cartpole"
[grid]
levels = [1, 2]
flows = ["R", "M", "C"]
clips = ["NORM"]
[train]
epochs = 5
seeds = 2
seed = 0
data_seed = 3
n_data = 32
batch_size = 8
optimizer = "adam"
learning_rate = 1e-3
clip_value = 1.0
clip_norm = 1.0
"""


def _gpu_visible() -> bool:
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    probe = subprocess.run(
        [sys.executable, "-c", "import jax; jax.devices('gpu')"], env=env, capture_output=True, timeout=120
    )
    return probe.returncode == 0


pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not _gpu_visible(), reason="no GPU visible to jax"),
]


def test_gpu_run_agrees_with_cpu_run(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text(GRID)
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    for device in ("gpu", "cpu"):
        run = subprocess.run(
            [str(BIN / "bptt-run"), str(path), "--device", device, "--out", str(tmp_path / device)],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert run.returncode == 0, run.stderr
    frames = [
        results.read_results(tmp_path / d).sort_values(["run_id", "seed", "epoch"]) for d in ("gpu", "cpu")
    ]
    columns = ["batch_loss", "train_loss", "test_loss", "update_sq_norm"]
    np.testing.assert_allclose(frames[0][columns].to_numpy(), frames[1][columns].to_numpy(), rtol=1e-4)
    meta = next((tmp_path / "gpu" / "g").glob("*.json")).read_text()
    assert '"matmul_precision": "highest"' in meta and '"grouping": "wide"' in meta
