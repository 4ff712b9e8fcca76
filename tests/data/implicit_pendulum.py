"""A damped pendulum stepped by implicit Euler, its equation solved by Newton's method to a
tolerance: a simulator written as people write them, in three variants (option ``solver``):

- ``adjoint``: the solve carries its own adjoint (``jax.custom_vjp``, by the implicit function
  theorem), as ODE, implicit and linear-solver libraries do. Reverse mode only.
- ``while``: the same solve without an adjoint: a ``while_loop`` of data-dependent length,
  which jax cannot differentiate in reverse mode.
- ``frozen``: an explicit step whose state input hides a ``stop_gradient`` (as some environment
  libraries wrap their states): it trains, with no feedback through time.

``level`` is the damping. State ``(angle, angular velocity)``, control a torque.
"""

import jax
import jax.numpy as jnp
from jax import lax

from bptt_cli import ProblemDef, Task

DT = 0.1
N_STEPS = 20
TOLERANCE = 1e-6
MAX_ITERATIONS = 50


def rate(y, u, damping):
    return jnp.stack([y[1], -jnp.sin(y[0]) - damping * y[1] + u])


def residual(y, x, u, damping):
    """Implicit Euler: ``y = x + dt·rate(y, u)``."""
    return y - x - DT * rate(y, u, damping)


def newton(x, u, damping):
    """The root of ``residual``, iterated until the update is below the tolerance."""

    def not_done(carry):
        _, i, change = carry
        return (change > TOLERANCE) & (i < MAX_ITERATIONS)

    def body(carry):
        y, i, _ = carry
        dy = jnp.linalg.solve(jax.jacfwd(residual)(y, x, u, damping), residual(y, x, u, damping))
        return y - dy, i + 1, jnp.max(jnp.abs(dy))

    return lax.while_loop(not_done, body, (x, 0, jnp.asarray(jnp.inf, x.dtype)))[0]


@jax.custom_vjp
def adjoint_step(x, u, damping):
    return newton(x, u, damping)


def _forward(x, u, damping):
    y = newton(x, u, damping)
    return y, (y, x, u, damping)


def _backward(saved, y_bar):
    # g(y, p) = 0 gives dy/dp = -(∂g/∂y)⁻¹ ∂g/∂p, so p̄ = -(∂g/∂p)ᵀ w with (∂g/∂y)ᵀ w = ȳ.
    y, x, u, damping = saved
    w = jnp.linalg.solve(jax.jacfwd(residual)(y, x, u, damping).T, y_bar)
    _, pullback = jax.vjp(lambda x, u, d: residual(y, x, u, d), x, u, damping)
    return tuple(-c for c in pullback(w))


adjoint_step.defvjp(_forward, _backward)


def frozen_step(x, u, damping):
    x = lax.stop_gradient(x)
    return x + DT * rate(x, u, damping)


STEPS = {"adjoint": adjoint_step, "while": newton, "frozen": frozen_step}


def controller(theta, x):
    return 2.0 * jnp.tanh(jnp.dot(theta["w"], x) + theta["b"])


def init_controller(key):
    return {"w": 0.1 * jax.random.normal(key, (2,)), "b": jnp.zeros(())}


def loss(xs, us):
    return jnp.mean(jnp.sum(xs[:, -1] ** 2, axis=-1)), {}


def sample_data(key, n_data):
    x = jax.random.uniform(key, (2 * n_data, 2), minval=-1.0, maxval=1.0)
    return x[:n_data], x[n_data:]


def make_task(damping, options):
    step = STEPS[options["solver"]]
    return Task(
        step=lambda x, u: step(x, u, damping),
        controller=controller,
        init_controller=init_controller,
        loss=loss,
        sample_data=sample_data,
        n_steps=N_STEPS,
    )


PROBLEM = ProblemDef(
    name="implicit_pendulum",
    level_key="damping",
    level_type=float,
    level_is_static=False,
    make_task=make_task,
    default_options={"solver": "adjoint"},
    option_choices={"solver": tuple(STEPS)},
)
