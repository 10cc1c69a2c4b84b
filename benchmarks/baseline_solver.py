"""The linear baseline's fit: rl.householder_lstsq against jnp.linalg.lstsq (LAPACK).

metajax fits rllab's linear feature baseline with Householder QR in plain XLA ops,
because the batched LAPACK SVD behind ``jnp.linalg.lstsq`` deadlocked XLA:CPU's
intra-op pool (``rl.householder_lstsq``'s docstring). This times both, in one
process, on one task batch of the nav2d shape (2-D observations, 8 features) and the
PointRobot shape (6-D, 16 features): 20 episodes of 100 steps per task, the vmapped,
jitted ``rl.linear_feature_baseline``, median of 20 calls after a warm-up. The
PointRobot shape at 20 tasks is not run with LAPACK: that is where it hung.

    python benchmarks/baseline_solver.py > benchmarks/results/baseline_solver.log
"""

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from metajax import rl


def lapack(a, b):
    return jnp.linalg.lstsq(a, b)[0]


def median_ms(solver, obs_dim, tasks, episodes=20, horizon=100, calls=20):
    fit = jax.jit(jax.vmap(functools.partial(rl.linear_feature_baseline, solve=solver)))
    obs = jax.random.normal(jax.random.key(0), (tasks, episodes, horizon, obs_dim))
    returns = jax.random.normal(jax.random.key(1), (tasks, episodes, horizon))
    masks = jnp.ones((tasks, episodes, horizon))
    fit(obs, returns, masks).block_until_ready()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fit(obs, returns, masks).block_until_ready()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def main():
    print(f"jax {jax.__version__}, {jax.devices()[0].platform}, {jax.device_count()} device(s)")
    print("| observation size | tasks | householder_lstsq, ms | jnp.linalg.lstsq, ms |")
    print("|---|---|---|---|")
    for obs_dim in (2, 6):
        for tasks in (2, 20):
            ours = median_ms(rl.householder_lstsq, obs_dim, tasks)
            if obs_dim == 6 and tasks == 20:
                theirs = "not run (deadlocks on two cores)"
            else:
                theirs = f"{median_ms(lapack, obs_dim, tasks):.2f}"
            print(f"| {obs_dim} | {tasks} | {ours:.2f} | {theirs} |")


if __name__ == "__main__":
    main()
