"""nav2d adaptation measured the way the MAML code's test script measures it.

``maml_examples/test_maml_point.py`` (github.com/cbfinn/maml_rl) adapts a loaded policy
with rllab's VPG, ``batch_size=4000``, and reads the ``AverageReturn`` column of each
iteration. Two properties of that protocol differ from ``metajax eval nav2d``, which
averages a fixed number of episodes per task:

* **The batch is a sample budget, not an episode count.** rllab's vectorised sampler
  steps ``batch_size / max_path_length = 40`` environments in lockstep, each
  restarting as soon as its episode ends, and stops at the first lockstep step at
  which the *completed* episodes hold at least 4000 steps; unfinished episodes are
  dropped (``sandbox/rocky/tf/samplers/vectorized_sampler.py``).
* **``AverageReturn`` is the mean over those episodes** (``rllab/sampler/base.py``). An
  environment whose episodes end early at the goal contributes several episodes, one
  whose episodes run to the time limit contributes one: the average is weighted
  towards short, successful episodes.

The linear baseline is fitted on the batch before it predicts (``--baseline current``,
the default): so does the version of ``rllab/sampler/base.py`` in the MAML code that
``batch_maml_polopt.py`` calls, and so does metajax's inner step. Upstream rllab, and an
older version of that file, predict first, so the first update uses a zero baseline
and later ones the previous batch's fit: ``--baseline previous``. Advantages are standardised over the
batch's steps in both cases (rllab's ``center_adv``), and each update is one gradient
step on the mean over the batch's steps of ``log pi * A`` (metajax's
``reinforce_loss``), with the run's inner step size, scaled by ``--later-lr-scale``
after the first update.

For each step the script prints the rllab-style average, the plain mean of the first
episode of each of the 40 environments (unweighted, the same policy and batch), the
number of episodes in the batch and the fraction that reached the goal.

    python experiments/nav2d/rllab_protocol/eval_rllab_protocol.py runs/nav2d/ab-dice-s0 --later-lr-scale 0.5
"""

import argparse
import math

import jax
import jax.numpy as jnp
import numpy as np

from metajax import rl
from metajax.recipes import nav2d


def make_protocol(env, policy, *, num_envs, stream_steps, batch_size, discount, horizon=100):
    """Returns ``sample(params, env_params, key) -> batch`` and ``update(...)``."""

    def stream(params, env_params, key):
        """``num_envs`` environments stepped in lockstep, each restarting when done."""

        def one_env(key):
            obs, state = env.reset(key, env_params)

            def body(carry, step_key):
                obs, state, t_episode = carry
                action_key, env_key, reset_key = jax.random.split(step_key, 3)
                action = policy.sample(params, obs, action_key)
                next_obs, next_state, reward, done, _ = env.step(env_key, state, action, env_params)
                reset_obs, reset_state = env.reset(reset_key, env_params)
                next_obs = jnp.where(done, reset_obs, next_obs)
                next_state = jax.tree.map(
                    lambda a, b: jnp.where(done, a, b), reset_state, next_state
                )
                out = dict(obs=obs, action=action, reward=reward, done=done, t=t_episode)
                return (next_obs, next_state, jnp.where(done, 0, t_episode + 1)), out

            carry = (obs, state, jnp.zeros((), jnp.int32))
            return jax.lax.scan(body, carry, jax.random.split(key, stream_steps))[1]

        return jax.vmap(one_env)(jax.random.split(key, num_envs))  # leaves [E, L, ...]

    def sample(params, env_params, key):
        s = stream(jax.lax.stop_gradient(params), env_params, key)
        done = s["done"].astype(jnp.float32)
        lengths = done * (s["t"] + 1)
        completed = jnp.cumsum(lengths.sum(0))  # completed steps after each lockstep step
        enough = completed >= batch_size
        stop = jnp.argmax(enough) + 1  # the sampler's last lockstep step (1-based)

        def end_times(done_row):  # the (1-based) step at which each step's episode ends
            def body(later, xs):
                t, d = xs
                end = jnp.where(d > 0, t + 1, later)
                return end, end

            times = jnp.arange(done_row.shape[0])
            return jax.lax.scan(body, jnp.int32(10**6), (times, done_row), reverse=True)[1]

        masks = (jax.vmap(end_times)(done) <= stop).astype(jnp.float32)
        ends = done * masks
        num_paths = ends.sum()
        first = (jnp.cumsum(done, axis=1) - done == 0).astype(jnp.float32)  # first episode
        reached = ends * (s["t"] + 1 < horizon)  # ended before the time limit
        return dict(
            obs=s["obs"],
            action=s["action"],
            reward=s["reward"],
            done=done,
            t=s["t"],
            masks=masks,
            stats=dict(
                rllab_return=jnp.sum(s["reward"] * masks) / num_paths,
                first_episode_return=jnp.sum(s["reward"] * first) / num_envs,
                num_paths=num_paths,
                reached=reached.sum() / num_paths,
                sampled_enough=enough[-1],
            ),
        )

    def features(batch):
        # rllab's linear-baseline features with the time step *within* each episode
        feats = rl.baseline_features(batch["obs"])
        t = (batch["t"].astype(jnp.float32) / 100.0)[..., None]
        return jnp.concatenate([feats[..., :4], t, t**2, t**3, feats[..., -1:]], axis=-1)

    def returns_to_go(batch):
        def body(later, xs):
            r, d = xs
            g = r + discount * later * (1.0 - d)
            return g, g

        xs = (jnp.moveaxis(batch["reward"], 1, 0), jnp.moveaxis(batch["done"], 1, 0))
        g = jax.lax.scan(body, jnp.zeros(batch["reward"].shape[0]), xs, reverse=True)[1]
        return jnp.moveaxis(g, 0, 1)

    def fit_baseline(batch, g, reg=1e-5):
        f = features(batch).reshape(-1, 8)
        root = jnp.sqrt(batch["masks"].reshape(-1, 1))
        system = jnp.concatenate([root * f, math.sqrt(reg) * jnp.eye(8)])
        target = jnp.concatenate([root[:, 0] * g.reshape(-1), jnp.zeros(8)])
        return jnp.linalg.lstsq(system, target)[0]

    def update(params, batch, lr, baseline_weights, baseline):
        g = returns_to_go(batch)
        fitted = fit_baseline(batch, g)
        weights = fitted if baseline == "current" else baseline_weights
        advantages = g - features(batch) @ weights
        m = batch["masks"]
        mean = jnp.sum(m * advantages) / m.sum()
        std = jnp.sqrt(jnp.sum(m * jnp.square(advantages - mean)) / m.sum())
        advantages = (advantages - mean) / (std + 1e-8)

        def loss(p):
            log_probs = policy.log_prob(p, batch["obs"], batch["action"])
            return -jnp.sum(m * log_probs * advantages) / m.sum()

        grads = jax.grad(loss)(params)
        return jax.tree.map(lambda p, d: p - lr * d, params, grads), fitted

    return sample, update


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--later-lr-scale", type=float, default=0.5)
    parser.add_argument("--inner-lr", type=float, default=None, help="default: the run's")
    parser.add_argument("--batch-size", type=int, default=4000, help="steps per batch (rllab)")
    parser.add_argument("--baseline", choices=("current", "previous"), default="current")
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--num-tasks", type=int, default=100)
    args = parser.parse_args()

    cfg, state = nav2d.load_run(args.workdir)
    env, policy, _ = nav2d.build(cfg)
    num_envs = max(1, min(100, args.batch_size // cfg.horizon))
    # enough lockstep steps for the completed episodes to reach the budget in every case
    stream_steps = -(-args.batch_size // num_envs) + cfg.horizon
    sample, update = make_protocol(
        env,
        policy,
        num_envs=num_envs,
        stream_steps=stream_steps,
        batch_size=args.batch_size,
        discount=cfg.discount,
        horizon=cfg.horizon,
    )
    inner_lr = cfg.inner_lr if args.inner_lr is None else args.inner_lr
    tasks = nav2d.held_out_tasks(args.seed, args.num_tasks, cfg.env)

    @jax.jit
    def one(task):
        params = state.meta_params
        weights = jnp.zeros(8)  # rllab's baseline predicts 0 before its first fit
        keys = jax.random.split(task.key, args.steps + 1)
        stats = []
        for k in range(args.steps + 1):
            batch = sample(params, task.env_params, keys[k])
            stats.append(batch["stats"])
            if k < args.steps:
                lr = inner_lr * (1.0 if k == 0 else args.later_lr_scale)
                params, weights = update(params, batch, lr, weights, args.baseline)
        return jax.tree.map(lambda *xs: jnp.stack(xs), *stats)

    stats = jax.tree.map(np.asarray, jax.lax.map(one, tasks))
    n = args.num_tasks
    ci = lambda a: 1.96 * a.std(ddof=1) / math.sqrt(n)  # noqa: E731
    print(
        f"run {args.workdir} (meta-step {int(state.step)}), {n} goals (seed {args.seed}); "
        f"batch {args.batch_size} steps from {num_envs} lockstep environments; inner lr "
        f"{inner_lr}, x{args.later_lr_scale} after the first update; baseline: {args.baseline}"
    )
    if not stats["sampled_enough"].all():
        print(f"WARNING: {int((~stats['sampled_enough']).sum())} batches fell short of the budget")
    print(
        "| inner steps | AverageReturn, rllab (mean over the batch's episodes) "
        "| first episode of each environment | episodes per batch | ended before the time limit |"
    )
    print("|---|---|---|---|---|")
    for k in range(args.steps + 1):
        r, f = stats["rllab_return"][:, k], stats["first_episode_return"][:, k]
        print(
            f"| {k} | {r.mean():.2f} ± {ci(r):.2f} | {f.mean():.2f} ± {ci(f):.2f} "
            f"| {stats['num_paths'][:, k].mean():.1f} | {100 * stats['reached'][:, k].mean():.1f}% |"
        )


if __name__ == "__main__":
    main()
