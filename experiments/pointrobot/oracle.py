"""Reference return on the PointRobot evaluation tasks: an oracle that knows the goal.

It moves straight at the goal at full speed (``clip(10 * (goal - pos), -0.1, 0.1)``
per coordinate), on the same 100 held-out goals and episode keys as
``metajax eval pointrobot`` (seed 12345, 20 episodes each). No learning is involved.

    python experiments/pointrobot/oracle.py
"""

import jax
import jax.numpy as jnp
import numpy as np

from metajax import rl
from metajax.recipes.nav2d import ENVS, held_out_tasks


def main(seed: int = 12345, num_tasks: int = 100, episodes: int = 20, horizon: int = 100):
    env, _ = ENVS["pointrobot"].make()
    tasks = held_out_tasks(seed, num_tasks, "pointrobot")

    def task_return(task):
        policy = rl.Policy(
            init=lambda key: {},
            sample=lambda p, obs, key: jnp.clip(10 * (task.env_params.goal - obs[:2]), -0.1, 0.1),
            log_prob=lambda p, obs, a: jnp.zeros(obs.shape[:-1]),
            mean=None,
        )
        # The episode key of "after 0 steps" in maml_rl's adapt (the first of steps + 1).
        key = jax.random.split(task.key, 4)[0]
        trajectories = rl.sample_trajectories(
            env, policy, {}, task.env_params, key, episodes, horizon
        )
        return rl.episode_returns(trajectories).mean()

    returns = np.asarray(jax.jit(jax.vmap(task_return))(tasks))
    ci = 1.96 * returns.std(ddof=1) / np.sqrt(num_tasks)
    print(f"oracle (straight to the known goal): {returns.mean():.2f} ± {ci:.2f}")


if __name__ == "__main__":
    main()
