"""What happens on the goals where a test-time inner step overshoots.

per_goal.py shows that, under the MAML code's test protocol, most goals reach the
paper's level while some fall below -20 after a later step. This script looks inside
those steps. For every held-out goal it runs the same adaptation as per_goal.py (the
library's ``adapt``: rllab's sampler, 40 environments, 4000-step batches), has it
record the parameters of every batch (``observe``), and records after each step:

- the policy's standard deviation (network units: ``exp(log_std)``, mean over the two
  action dimensions; actions are ``0.1 x`` network units and clipped to ``[-0.1, 0.1]``);
- the norm of the parameter change of the step;
- the length of the mean action at the start (the origin) in units of the speed limit:
  well above 1, the mean alone saturates the clip;
- the fraction of steps whose sampled action is clipped in some dimension.

It then compares the goals that end above and below -20 after the last step.
``--goals code`` takes the MAML code's 40 test goals instead (see per_goal.py).

    python experiments/nav2d/code_config/overshoot.py runs/nav2d/code-config-maml-s0 --later-lr-scale 0.5
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from per_goal import add_arguments, goal_set

from metajax import rl
from metajax.recipes import nav2d


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--threshold", type=float, default=-20.0)
    args = parser.parse_args()
    tasks, goals = goal_set(args)
    print(f"{goals}, later steps x{args.later_lr_scale}")
    for workdir in args.workdirs:
        report(workdir, tasks, args)


def report(workdir, tasks, args):
    cfg, state = nav2d.load_run(workdir)
    env, policy, learner = nav2d.build(cfg, num_trajectories=40, sampler="steps", envs_per_task=40)
    max_speed = env.default_params().max_speed

    def stats(params, trajectories):
        clipped = jnp.any(jnp.abs(trajectories.actions) > max_speed, axis=-1)
        return {
            "std": jnp.mean(jnp.exp(params["log_std"])),
            "mean_at_start": jnp.linalg.norm(policy.mean(params, jnp.zeros(2)) / max_speed),
            "clipped": rl.weighted_mean(clipped.astype(jnp.float32), trajectories.masks),
        }

    @jax.jit
    def one(task):
        _, result = learner.adapt(
            state.meta_params,
            task,
            steps=args.steps,
            later_lr_scale=args.later_lr_scale,
            observe=lambda params: params,
        )
        params = result.observations  # [steps + 1] the parameters that sampled each batch
        rows = jax.vmap(stats)(params, result.trajectories)
        step_norms = jax.vmap(optax.tree.norm)(jax.tree.map(lambda p: p[1:] - p[:-1], params))
        rows["step_norm"] = jnp.append(step_norms, jnp.nan)
        return result.returns, rows

    results = jax.lax.map(one, tasks)
    returns, rows = jax.tree.map(np.asarray, results)
    print(f"\n{workdir} ({cfg.meta_gradient}, inner lr {cfg.inner_lr})")
    final_bad = returns[:, -1] < args.threshold
    print(
        f"{int(final_bad.sum())} of {len(returns)} goals below {args.threshold:g} after "
        f"{args.steps} steps; medians over each group (below / rest):"
    )
    print(
        "| after step | return | std | mean action at start (x max speed) "
        "| clipped actions | norm of the next step |"
    )
    print("|---|---|---|---|---|---|")
    for k in range(args.steps + 1):
        cells = [
            pair(returns[:, k], final_bad, ".2f"),
            pair(rows["std"][:, k], final_bad, ".3f"),
            pair(rows["mean_at_start"][:, k], final_bad, ".2f"),
            pair(rows["clipped"][:, k], final_bad, ".2f"),
            pair(rows["step_norm"][:, k], final_bad, ".2f") if k < args.steps else "-",
        ]
        print(f"| {k} | " + " | ".join(cells) + " |")
    late = final_bad & (returns[:, 1] >= args.threshold)
    print(
        f"of those, {int(late.sum())} were above {args.threshold:g} after step 1 "
        f"(a later step overshot)"
    )
    goals = np.asarray(tasks.env_params.goal)
    dist = np.linalg.norm(goals, axis=-1)
    print(
        f"goal distance from the start, median (below / rest): "
        f"{np.median(dist[final_bad]):.3f} / {np.median(dist[~final_bad]):.3f}"
    )


def pair(values, bad, fmt):
    a = np.median(values[bad]) if bad.any() else np.nan
    return f"{a:{fmt}} / {np.median(values[~bad]):{fmt}}"


if __name__ == "__main__":
    main()
