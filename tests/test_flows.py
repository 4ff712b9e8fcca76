"""Gradient flows (docs/model.md §2) against a plain Python loop with explicit stop_gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bptt_cli.core import flows
from bptt_cli.problems import cartpole

N_STEPS = 12
sg = jax.lax.stop_gradient


def setup(n_poles=2, batch=4):
    theta = cartpole.init_controller(jax.random.key(0), n_poles)
    theta[-1]["w"] = 0.3 * jax.random.normal(jax.random.key(1), theta[-1]["w"].shape)
    theta = jax.tree.map(lambda a: a.astype(jnp.float64), theta)
    x0 = cartpole.sample_initial_states(jax.random.key(2), batch, n_poles).astype(jnp.float64)
    return theta, x0


def loop_loss(flow, theta, x0, n_steps=N_STEPS):
    """Explicit unrolled loop; every cut written out by hand."""
    net = jax.vmap(cartpole.controller, (None, 0))
    sim = jax.vmap(cartpole.step)
    x, xs, us = x0, [x0], []
    every = int(flow[1:]) if flow.startswith("T") else None
    for i in range(n_steps):
        if every is not None and i > 0 and i % every == 0:
            x = sg(x)
        if flow == "R" or every is not None:
            u = net(theta, x)
            x = sim(x, u)
        elif flow == "M":
            u = net(theta, sg(x))
            x = sim(x, u)
        elif flow == "S":
            u = net(theta, sg(x))
            x = sim(sg(x), u)
        xs.append(x)
        us.append(u)
    return cartpole.loss(jnp.stack(xs, 1), jnp.stack(us, 1))


def api(flow, theta, x0, n_steps=N_STEPS):
    return flows.value_and_grad(flow, cartpole.controller, cartpole.step, cartpole.loss, theta, x0, n_steps)


def flat(tree):
    return np.concatenate([np.ravel(leaf) for leaf in jax.tree.leaves(tree)])


@pytest.mark.parametrize("flow", ["R", "M", "S", "T1", "T3", "T5"])
def test_flow_matches_explicit_loop(flow, x64):
    theta, x0 = setup()
    value, grads = api(flow, theta, x0)
    ref_value, ref_grads = jax.value_and_grad(lambda t: loop_loss(flow, t, x0))(theta)
    assert float(value) == pytest.approx(float(ref_value), rel=1e-12)
    np.testing.assert_allclose(flat(grads), flat(ref_grads), rtol=1e-9, atol=1e-12)


def test_combined_matches_explicit_rule(x64):
    theta, x0 = setup()
    value, grads = api("C", theta, x0)
    g_r = flat(jax.grad(lambda t: loop_loss("R", t, x0))(theta))
    g_m = flat(jax.grad(lambda t: loop_loss("M", t, x0))(theta))
    expected = np.where(np.sign(g_m) == np.sign(g_r), g_m, 0.0)
    np.testing.assert_allclose(flat(grads), expected, rtol=1e-9, atol=1e-12)
    assert float(value) == pytest.approx(float(loop_loss("R", theta, x0)), rel=1e-12)
    # C keeps some of M and drops some of it: the rule is doing something on this problem.
    assert 0 < np.count_nonzero(flat(grads)) < np.count_nonzero(g_m)
    assert np.dot(flat(grads), g_r) >= 0


def test_flows_accept_enum_and_lowercase(x64):
    theta, x0 = setup()
    a = api(flows.Flow.M, theta, x0)[1]
    b = api("m", theta, x0)[1]
    np.testing.assert_array_equal(flat(a), flat(b))


def test_forward_values_identical_across_flows(x64):
    theta, x0 = setup()
    values = {flow: float(api(flow, theta, x0)[0]) for flow in ["R", "M", "S", "C", "T4"]}
    assert len(set(values.values())) == 1, values
    trajectories = [
        flows.rollout(f, cartpole.controller, cartpole.step, theta, x0, N_STEPS)[0] for f in "RMS"
    ]
    for xs in trajectories[1:]:
        np.testing.assert_array_equal(xs, trajectories[0])


def test_flows_really_differ(x64):
    theta, x0 = setup()
    grads = {flow: flat(api(flow, theta, x0)[1]) for flow in ["R", "M", "S"]}
    assert not np.allclose(grads["R"], grads["M"])
    assert not np.allclose(grads["M"], grads["S"])


def test_truncation_limits(x64):
    theta, x0 = setup()
    np.testing.assert_allclose(flat(api("T1", theta, x0)[1]), flat(api("S", theta, x0)[1]), rtol=1e-12)
    np.testing.assert_allclose(
        flat(api(f"T{N_STEPS}", theta, x0)[1]), flat(api("R", theta, x0)[1]), rtol=1e-12
    )


def test_combine_rule_on_pytrees():
    g_m = {"a": jnp.array([1.0, -2.0, 3.0, 0.0, -1.0]), "b": jnp.array([[0.5, -0.5]])}
    g_r = {"a": jnp.array([2.0, -1.0, -3.0, 5.0, 0.0]), "b": jnp.array([[-1.0, -4.0]])}
    c = flows.combine(g_m, g_r)
    np.testing.assert_array_equal(c["a"], [1.0, -2.0, 0.0, 0.0, 0.0])
    np.testing.assert_array_equal(c["b"], [[0.0, -0.5]])


def test_combined_never_opposes_r_on_random_trees():
    keys = jax.random.split(jax.random.key(3), 40)
    for k in keys:
        k1, k2 = jax.random.split(k)
        g_m = {"w": jax.random.normal(k1, (7, 3)), "b": jnp.zeros(3)}
        g_r = {"w": jax.random.normal(k2, (7, 3)), "b": jnp.ones(3)}
        c = flows.combine(g_m, g_r)
        assert float(flows.tree_dot(c, g_r)) >= 0.0
        assert float(flows.tree_dot(c, g_m)) >= 0.0
        np.testing.assert_array_equal(c["b"], 0.0)  # sign(0) = 0: zero where either is zero


def test_cosine():
    a = {"x": jnp.array([1.0, 0.0])}
    assert float(flows.cosine(a, {"x": jnp.array([0.0, 2.0])})) == 0.0
    assert float(flows.cosine(a, {"x": jnp.array([-3.0, 0.0])})) == pytest.approx(-1.0)
    assert float(flows.cosine(a, {"x": jnp.zeros(2)})) == 0.0


@pytest.mark.parametrize("bad", ["X", "T0", "T", "RC", "t-1"])
def test_unknown_flow_rejected(bad):
    with pytest.raises(ValueError, match="unknown flow"):
        flows.canonical(bad)
