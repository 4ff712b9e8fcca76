"""The README's library example runs as written and means what it says."""

import re
from pathlib import Path

import jax
import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def test_library_example_runs_and_matches_the_flow_api():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    example = next(b for b in blocks if "bptt_cli.value_and_grad" in b)
    scope: dict = {}
    exec(compile(example, "README.md", "exec"), scope)
    value, grads = scope["value"], scope["grads"]
    assert np.isfinite(float(value))
    assert jax.tree.structure(grads) == jax.tree.structure(scope["params"])
    # C is M kept where it agrees with R: never opposed to R.
    from bptt_cli.core import flows

    g_r = flows.value_and_grad(
        "R", scope["controller"], scope["step"], scope["loss"], scope["params"], scope["x0"], 50
    )[1]
    assert float(flows.tree_dot(grads, g_r)) >= 0
