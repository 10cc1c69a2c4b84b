"""MAML-RL on goal-reaching tasks: the MAML paper's 2D navigation (Finn et al. 2017,
sec. 5.3) and gymnax's PointRobot and MetaMaze.

``train(Nav2DTrain(...))`` meta-trains an MLP policy (Gaussian for continuous
actions, softmax for discrete ones) with
:func:`metajax.rl.maml_rl` (or, with ``algorithm="pretrain"``, trains one policy
by policy gradient across tasks); each meta-step samples its tasks and episodes on
the device inside the jitted step. ``evaluate(Nav2DEval(...))`` adapts the
meta-learned policy, the pretrained one and a random initialisation with the same
inner policy-gradient steps on held-out goals and reports the average return after
0..k steps, with a plot of return vs. inner steps and a picture of trajectories
before and after adaptation.

``env`` picks the environment (:data:`ENVS`): ``nav2d`` (metajax's own),
``pointrobot`` (gymnax's PointRobot with its dense reward ``-distance``, the episode
ending at the goal), ``pointrobot-sparse`` (gymnax's default sparse reward, 1 at the
goal, same episodes) and ``metamaze`` (gymnax's MetaMaze, the position observed);
see :mod:`metajax.envs.gymnax_adapter` for how gymnax's RL^2 environments become
MAML tasks. ``PointRobotTrain``/``PointRobotEval`` are the same recipe with
PointRobot defaults (``metajax train pointrobot``), ``MetaMazeTrain``/``MetaMazeEval``
with MetaMaze ones (``metajax train metamaze``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import numpy as np
import optax

from metajax import rl
from metajax.envs import Nav2D, sample_nav2d_params
from metajax.runner import jit_on_devices, restore_run, run_training
from metajax.train import (
    TrainState,
    init_train_state,
    make_train_step,
    map_tasks,
    repeat_step,
)

PAPER_MAML_RETURNS = (-40.41, -11.68, -3.33, -3.23)

EnvName = Literal["nav2d", "pointrobot", "pointrobot-sparse", "metamaze"]


class EnvSpec(NamedTuple):
    """How the recipe builds, samples and draws one environment.

    Attributes:
      make: ``() -> (env, sample_params)``; ``sample_params`` is the task
        distribution ``key -> env params``.
      positions: ``observations [..., obs] -> [..., 2]`` plotted ``(x, y)``.
      goal_xy: ``env params -> [2]`` the goal in the same coordinates.
      limits: ``((x_min, x_max), (y_min, y_max))`` of the trajectory plots.
      paper_returns: the MAML paper's returns after 0..3 steps, if it has them.
      title: figure title.
    """

    make: Callable[[], tuple[Any, Callable]]
    positions: Callable
    goal_xy: Callable
    limits: tuple
    paper_returns: tuple[float, ...] | None
    title: str


def _nav2d():
    return Nav2D(), sample_nav2d_params


def _gymnax(name, **kwargs):
    def make():
        from metajax.envs.gymnax_adapter import make_gymnax_env

        env = make_gymnax_env(name, **kwargs)
        return env, env.sample_params

    return make


def _maze_positions(obs):  # (row, col) / 10 appended by observe_position -> (col, -row)
    return np.stack([obs[..., -1], -obs[..., -2]], -1) * 10


ENVS: dict[str, EnvSpec] = {
    "nav2d": EnvSpec(
        _nav2d,
        lambda o: o[..., :2],
        lambda p: p.goal,
        ((-0.7, 0.7),) * 2,
        PAPER_MAML_RETURNS,
        "2D navigation",
    ),
    "pointrobot": EnvSpec(
        _gymnax("PointRobot-misc", dense_reward=True),
        lambda o: o[..., :2],
        lambda p: p.goal,
        ((-1.3, 1.3), (-0.3, 1.3)),
        None,
        "gymnax PointRobot (dense reward)",
    ),
    "pointrobot-sparse": EnvSpec(
        _gymnax("PointRobot-misc"),
        lambda o: o[..., :2],
        lambda p: p.goal,
        ((-1.3, 1.3), (-0.3, 1.3)),
        None,
        "gymnax PointRobot (sparse reward)",
    ),
    "metamaze": EnvSpec(
        _gymnax("MetaMaze-misc", normalize_time=True),
        _maze_positions,
        lambda p: np.array([p.goal[1], -p.goal[0]]),
        ((0, 10), (-10, 0)),
        None,
        "gymnax MetaMaze",
    ),
}


@dataclasses.dataclass(frozen=True)
class Nav2DTrain:
    """Meta-train on 2D navigation (defaults: the paper's, except the outer optimiser).

    Attributes:
      workdir: run directory (checkpoints, metrics, config); rerun to resume.
      env: the environment (:data:`ENVS`; gymnax ones need ``pip install metajax[rl]``).
      algorithm: ``maml`` or ``pretrain`` (one policy trained on all tasks).
      steps: meta-iterations.
      meta_batch: tasks per meta-step (paper: 20).
      num_trajectories: episodes per inner step and for the outer loss (paper: 20).
      horizon: maximum episode length (paper: 100).
      inner_lr: inner policy-gradient step size (paper: 0.1; the MAML code's 2D
        navigation scripts, ``maml_examples/maml_trpo_point.py`` and
        ``test_maml_point.py``, use 0.5 in training and for the first test step).
      inner_steps: inner steps in meta-training (paper: 1).
      outer_optimizer: ``adam`` (on the post-adaptation REINFORCE surrogate) or
        ``trpo`` (the paper's: a natural-gradient step inside a KL trust region,
        :func:`metajax.rl.make_trust_region_step`).
      outer_lr: Adam learning rate. With 5e-3 a 300-step run diverged at step ~80
        (see experiments/nav2d).
      max_grad_norm: clip the meta-gradient to this global norm before Adam (0: off).
      max_kl: TRPO's KL radius (the paper's code: 0.01).
      discount: discount of the returns-to-go (rllab: 0.99).
      meta_gradient: ``dice`` (unbiased Hessian of the inner objective),
        ``maml`` (the paper's estimator) or ``first_order``.
      sampler: ``episodes`` (``num_trajectories`` episodes per batch) or ``steps``
        (the MAML code's sampler: ``num_trajectories * horizon`` steps of completed
        episodes per task, from ``envs_per_task`` environments that restart when an
        episode ends; :func:`metajax.rl.sample_step_budget`).
      envs_per_task: lockstep environments per task with ``sampler=steps`` (the MAML
        code meta-trains with 1).
      hidden: policy hidden widths (paper: 100, 100).
      seed: seed of the initialisation and of task sampling.
      steps_per_call: meta-steps fused into one compiled call.
      log_every: metrics period (steps).
      checkpoint_every: checkpoint period (steps).
      keep_best: a training metric (e.g. ``return_post``; ``-name`` to minimise):
        each checkpoint step's state is also kept in ``<workdir>/best`` if it beats
        the one kept there (the MAML paper evaluated "the model with the best average
        return during training"); ``""`` keeps no such copy.
      progress: show a progress bar.
      devices: devices the meta-batch is sharded over (:mod:`metajax.parallel`; both
        outer optimisers): 0 for every device, 1 for a single one. A meta-batch that
        does not divide them is padded with weightless tasks.
    """

    workdir: str = "runs/nav2d/maml"
    env: EnvName = "nav2d"
    algorithm: Literal["maml", "pretrain"] = "maml"
    steps: int = 500
    meta_batch: int = 20
    num_trajectories: int = 20
    horizon: int = 100
    inner_lr: float = 0.1
    inner_steps: int = 1
    outer_optimizer: Literal["adam", "trpo"] = "adam"
    outer_lr: float = 1e-3
    max_grad_norm: float = 1.0
    max_kl: float = 0.01
    discount: float = 0.99
    meta_gradient: rl.MetaGradient = "dice"
    sampler: rl.Sampler = "episodes"
    envs_per_task: int = 1
    hidden: tuple[int, ...] = (100, 100)
    seed: int = 0
    steps_per_call: int = 1
    log_every: int = 5
    checkpoint_every: int = 50
    keep_best: str = ""
    progress: bool = True
    devices: int = 0


@dataclasses.dataclass(frozen=True)
class Nav2DEval:
    """Evaluate nav2d runs: average return after 0..``steps`` inner steps.

    Attributes:
      workdirs: run directories (a MAML run and a pretrain run).
      random_init: also evaluate a random initialisation (the first run's config
        and seed, untrained).
      steps: inner policy-gradient steps at test time (paper: up to 3).
      num_tasks: held-out goals.
      inner_lr: test-time inner step size (default: each run's).
      num_trajectories: episodes per task for each test-time inner step and for each
        reported return (default: each run's training value). The MAML code's
        evaluation (``maml_examples/test_maml_point.py``) sampled 4000 steps per
        update from 40 environments (``--sampler steps --envs-per-task 40
        --num-trajectories 40``).
      sampler: ``episodes`` or ``steps`` (default: each run's; see
        :class:`Nav2DTrain`). With ``steps`` the reported return is the mean over
        each batch's completed episodes, rllab's ``AverageReturn``.
      envs_per_task: lockstep environments per task with ``sampler=steps``
        (default: each run's).
      later_lr_scale: factor on the step size of inner steps 2, 3, ... (the paper
        halved it after the first step at evaluation: 0.5).
      seed: seed of the held-out goals and episodes (a stream apart from training).
      out: where to write ``nav2d_eval.json``/``.md`` and the figures (default: the
        first workdir).
    """

    workdirs: tuple[str, ...] = ("runs/nav2d/maml", "runs/nav2d/pretrain")
    random_init: bool = True
    steps: int = 3
    num_tasks: int = 100
    inner_lr: float | None = None
    num_trajectories: int | None = None
    sampler: rl.Sampler | None = None
    envs_per_task: int | None = None
    later_lr_scale: float = 1.0
    seed: int = 12345
    out: str | None = None


def make_policy(env, hidden: tuple[int, ...]) -> rl.Policy:
    """Softmax policy for discrete actions, else Gaussian scaled to the speed limit."""
    if getattr(env, "num_actions", None):
        return rl.categorical_mlp_policy(env.observation_size, env.num_actions, hidden)
    if hasattr(env, "env_params"):  # gymnax PointRobot: actions clipped to max_force
        scale = env.env_params.max_force
    else:
        scale = env.default_params().max_speed
    return rl.gaussian_mlp_policy(env.observation_size, env.action_size, hidden, action_scale=scale)


def build(
    cfg: Nav2DTrain,
    inner_lr: float | None = None,
    num_trajectories: int | None = None,
    sampler: rl.Sampler | None = None,
    envs_per_task: int | None = None,
):
    """Returns ``(env, policy, learner)`` for a config (the other arguments: test-time
    overrides of the config's values, ``None`` for the config's)."""
    env, _ = ENVS[cfg.env].make()
    policy = make_policy(env, cfg.hidden)
    kwargs = dict(
        inner_lr=cfg.inner_lr if inner_lr is None else inner_lr,
        inner_steps=cfg.inner_steps,
        num_trajectories=cfg.num_trajectories if num_trajectories is None else num_trajectories,
        horizon=cfg.horizon,
        discount=cfg.discount,
        sampler=cfg.sampler if sampler is None else sampler,
        envs_per_task=cfg.envs_per_task if envs_per_task is None else envs_per_task,
    )
    if cfg.algorithm == "maml":
        learner = rl.maml_rl(env, policy, meta_gradient=cfg.meta_gradient, **kwargs)
    elif cfg.algorithm == "pretrain":
        learner = rl.pretrain_rl(env, policy, **kwargs)
    else:
        raise ValueError(f"algorithm must be maml or pretrain, got {cfg.algorithm!r}.")
    return env, policy, learner


def initial_state(cfg: Nav2DTrain) -> tuple[TrainState, optax.GradientTransformation]:
    _, policy, learner = build(cfg)
    init_key, task_key = jax.random.split(jax.random.key(cfg.seed))
    if cfg.outer_optimizer == "trpo":
        outer = optax.identity()  # the trust-region step keeps no optimiser state
    elif cfg.outer_optimizer == "adam":
        outer = optax.adam(cfg.outer_lr)
        if cfg.max_grad_norm > 0:
            outer = optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), outer)
    else:
        raise ValueError(f"outer_optimizer must be adam or trpo, got {cfg.outer_optimizer!r}.")
    return init_train_state(learner, policy.init(init_key), outer, task_key), outer


def train(cfg: Nav2DTrain) -> TrainState:
    """Meta-trains (or resumes) one nav2d run; returns the final state."""
    _, _, learner = build(cfg)
    state, outer = initial_state(cfg)
    sample_tasks = rl.rl_task_sampler(ENVS[cfg.env].make()[1])
    if cfg.outer_optimizer == "trpo":
        step = rl.make_trust_region_step(
            learner, sample_tasks=sample_tasks, meta_batch=cfg.meta_batch, max_kl=cfg.max_kl
        )
    else:
        step = make_train_step(
            learner,
            outer,
            sample_tasks=sample_tasks,
            meta_batch=cfg.meta_batch,
            pre_adaptation_metrics=False,
        )
    if cfg.steps_per_call > 1:
        step = repeat_step(step, cfg.steps_per_call)
    train_step, state = jit_on_devices(step, cfg.devices, cfg.meta_batch, state)
    return run_training(
        workdir=cfg.workdir,
        state=state,
        train_step=train_step,
        num_steps=cfg.steps,
        steps_per_call=cfg.steps_per_call,
        log_every=cfg.log_every,
        checkpoint_every=cfg.checkpoint_every,
        config=dataclasses.asdict(cfg),
        progress=cfg.progress,
        plot=False,
        description=f"{cfg.env}/{cfg.algorithm}",
        keep_best=cfg.keep_best or None,
    )


def load_run(workdir: str) -> tuple[Nav2DTrain, TrainState]:
    """Restores the newest checkpoint of a run directory with its config.

    Runs written before ``max_grad_norm`` existed used plain Adam: their config has
    no such key, and they are read with ``max_grad_norm=0``.
    """
    path = os.path.join(workdir, "config.json")
    legacy = os.path.exists(path) and "max_grad_norm" not in json.load(open(path))

    def template(cfg):
        return initial_state(dataclasses.replace(cfg, max_grad_norm=0.0) if legacy else cfg)[0]

    cfg, state = restore_run(workdir, Nav2DTrain, template)
    return (dataclasses.replace(cfg, max_grad_norm=0.0) if legacy else cfg), state


def held_out_tasks(seed: int, num_tasks: int, env: str = "nav2d") -> rl.RLTask:
    """The evaluation goals and episode keys (the same for every evaluated policy)."""
    keys = jax.random.split(jax.random.key(seed), num_tasks)
    return jax.vmap(rl.rl_task_sampler(ENVS[env].make()[1]))(keys)


def adaptation_returns(
    learner, params, tasks: rl.RLTask, steps: int, later_lr_scale: float = 1.0
) -> np.ndarray:
    """``[tasks, steps + 1]`` mean episode return after 0..steps inner updates."""

    @jax.jit
    def run(params, tasks):
        def one(task):
            return learner.adapt(params, task, steps=steps, later_lr_scale=later_lr_scale)[1]

        return map_tasks(lambda task: one(task).returns, tasks, 10)

    return np.asarray(run(params, tasks))


def _summary(returns: np.ndarray) -> list[tuple[float, float]]:
    ci = 1.96 * returns.std(0, ddof=1) / np.sqrt(returns.shape[0])
    return [(float(m), float(c)) for m, c in zip(returns.mean(0), ci)]


def paired_difference(
    results: dict, run_a: str, steps_a: int, run_b: str, steps_b: int
) -> tuple[float, float]:
    """Mean and 95% CI half-width of ``a - b`` over the held-out goals, goal by goal.

    ``a`` is run ``run_a``'s return after ``steps_a`` inner steps, ``b`` run ``run_b``'s
    after ``steps_b``, both from one :func:`evaluate` result (the same goals and episode
    keys). Pairing removes the part of each policy's spread that comes from the goals
    themselves (a near goal is easy for every policy).

    Raises:
      KeyError: a run is not in ``results`` or was evaluated before per-goal returns
        were kept.
      ValueError: a step count outside the evaluated ``0..steps``.
    """
    rows = []
    for run, steps in ((run_a, steps_a), (run_b, steps_b)):
        if run not in results["runs"]:
            raise KeyError(f"no run {run!r} in this evaluation: {sorted(results['runs'])}")
        if "per_goal_returns" not in results["runs"][run]:
            raise KeyError(f"run {run!r} has no per_goal_returns (evaluated before they were kept)")
        per_goal = np.asarray(results["runs"][run]["per_goal_returns"])
        if not 0 <= steps < per_goal.shape[1]:
            raise ValueError(
                f"run {run!r} was evaluated after 0..{per_goal.shape[1] - 1} inner steps, "
                f"not {steps}"
            )
        rows.append(per_goal[:, steps])
    ((mean, half),) = _summary((rows[0] - rows[1])[:, None])
    return mean, half


def evaluate(cfg: Nav2DEval) -> dict:
    """Evaluates the runs (and a random initialisation); writes a table and figures."""
    out_dir = cfg.out or cfg.workdirs[0]
    os.makedirs(out_dir, exist_ok=True)
    runs = {workdir: load_run(workdir) for workdir in cfg.workdirs}
    first_cfg = runs[cfg.workdirs[0]][0]
    env = first_cfg.env
    if any(train_cfg.env != env for train_cfg, _ in runs.values()):
        raise ValueError(f"every run must be on the same environment: {cfg.workdirs}.")
    if cfg.random_init:
        runs["random init"] = (first_cfg, initial_state(first_cfg)[0])
    tasks = held_out_tasks(cfg.seed, cfg.num_tasks, env)
    results = {
        "config": dataclasses.asdict(cfg),
        "env": env,
        "episodes": {
            "num_trajectories": cfg.num_trajectories or first_cfg.num_trajectories,
            "horizon": first_cfg.horizon,
            "sampler": cfg.sampler or first_cfg.sampler,
            "envs_per_task": cfg.envs_per_task or first_cfg.envs_per_task,
        },
        "runs": {},
    }
    policies = {}
    for name, (train_cfg, state) in runs.items():
        _, policy, learner = build(
            train_cfg, cfg.inner_lr, cfg.num_trajectories, cfg.sampler, cfg.envs_per_task
        )
        untrained = name == "random init"
        algorithm = "random init" if untrained else train_cfg.algorithm
        policies[name if untrained else f"{algorithm} ({name})"] = (
            learner,
            policy,
            state.meta_params,
        )
        per_goal = adaptation_returns(
            learner, state.meta_params, tasks, cfg.steps, cfg.later_lr_scale
        )
        results["runs"][name] = {
            "algorithm": algorithm,
            "meta_steps": 0 if untrained else int(state.step),
            "meta_gradient": train_cfg.meta_gradient if algorithm == "maml" else "-",
            "returns": _summary(per_goal),
            # [goals, steps + 1]: every policy meets the same goals and episode keys, so
            # two policies compare goal by goal (:func:`paired_difference`).
            "per_goal_returns": per_goal.tolist(),
        }
    with open(os.path.join(out_dir, f"{env}_eval.json"), "w") as f:
        json.dump(results, f, indent=2)
    table = format_table(results, cfg)
    with open(os.path.join(out_dir, f"{env}_eval.md"), "w") as f:
        f.write(table + "\n")
    print(table)
    plot_returns(results, os.path.join(out_dir, f"{env}_returns.png"))
    plot_training(cfg.workdirs, os.path.join(out_dir, f"{env}_training.png"))
    plot_trajectories(
        policies,
        tasks,
        cfg.steps,
        os.path.join(out_dir, f"{env}_trajectories.png"),
        later_lr_scale=cfg.later_lr_scale,
        spec=ENVS[env],
    )
    return results


def format_table(results: dict, cfg: Nav2DEval) -> str:
    """Markdown table: one row per policy, columns = return after k inner steps."""
    steps = range(cfg.steps + 1)
    lines = [
        "| policy | meta-steps | meta-gradient | "
        + " | ".join(f"after {k} step{'s' if k != 1 else ''}" for k in steps)
        + " |",
        "|" + "---|" * (3 + len(steps)),
    ]
    for name, run in results["runs"].items():
        cells = [f"{m:.2f} ± {c:.2f}" for m, c in run["returns"]]
        lines.append(
            f"| {run['algorithm']} (`{name}`) | {run['meta_steps']} | {run['meta_gradient']} | "
            + " | ".join(cells)
            + " |"
        )
    paper = ENVS[results.get("env", "nav2d")].paper_returns
    if paper:
        cells = [f"{v:.2f}" for v in paper[: cfg.steps + 1]]
        lines.append("| MAML, paper (Table 4) | TRPO | - | " + " | ".join(cells) + " |")
    episodes = results.get("episodes", {"num_trajectories": 20, "horizon": 100})
    n, horizon = episodes["num_trajectories"], episodes["horizon"]
    if episodes.get("sampler", "episodes") == "steps":
        batch = (
            f"a fresh batch of {n * horizon} steps of completed episodes from "
            f"{episodes['envs_per_task']} lockstep environments (rllab's sampler)"
        )
        measured = (
            "Mean undiscounted return over the episodes of each batch (rllab's AverageReturn)"
        )
    else:
        batch = f"{n} fresh episodes"
        measured = f"Mean undiscounted return of {n} episodes per task"
    lines.append(
        f"\n{measured}, horizon {horizon}, mean ± 95% CI over {cfg.num_tasks} held-out goals "
        f"(seed {cfg.seed}); each inner step is one REINFORCE update with the linear baseline "
        f"on {batch}; steps after the first use {cfg.later_lr_scale} x the inner step size."
    )
    return "\n".join(lines)


def plot_returns(results: dict, path: str) -> None:
    """Average return vs. number of inner policy-gradient steps.

    With a random initialisation among the runs, a second panel leaves it out, so
    that the trained policies and the paper's curve are not squashed by its scale.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec = ENVS[results.get("env", "nav2d")]
    trained = [name for name in results["runs"] if name != "random init"]
    panels = [list(results["runs"])]
    if len(trained) < len(results["runs"]) and trained:
        panels.append(trained)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, names in zip(axes[0], panels):
        for name in names:
            run = results["runs"][name]
            means = [m for m, _ in run["returns"]]
            cis = [c for _, c in run["returns"]]
            ax.errorbar(range(len(means)), means, yerr=cis, marker="o", capsize=3, label=name)
        if spec.paper_returns:
            paper = spec.paper_returns[: len(means)]
            ax.plot(range(len(paper)), paper, "k--", label="MAML, paper")
        ax.set_xlabel("inner policy-gradient steps")
        ax.set_ylabel("average return")
        shown = "" if len(names) == len(results["runs"]) else " (without the random init)"
        ax.set_title(f"{spec.title}: return vs. adaptation steps{shown}", fontsize=9)
        ax.set_xticks(range(len(means)))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_training(workdirs: tuple[str, ...], path: str) -> None:
    """Mean episode return before/after adaptation during meta-training (metrics.jsonl)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from metajax.runner import METRICS_FILE, read_jsonl

    fig, ax = plt.subplots(figsize=(6, 4))
    for workdir in workdirs:
        metrics = os.path.join(workdir, METRICS_FILE)
        if not os.path.exists(metrics):  # <run>/best (keep_best): its run's curve
            metrics = os.path.join(os.path.dirname(os.path.normpath(workdir)), METRICS_FILE)
        records = read_jsonl(metrics)
        steps = [r["step"] for r in records]
        ax.plot(steps, [r["return_pre"] for r in records], lw=1, label=f"{workdir}: before")
        if any(r["return_post"] != r["return_pre"] for r in records):
            ax.plot(steps, [r["return_post"] for r in records], lw=1, label=f"{workdir}: after")
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel("mean return of the meta-batch episodes")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_trajectories(
    policies: dict,
    tasks: rl.RLTask,
    steps: int,
    path: str,
    shown: int = 2,
    later_lr_scale: float = 1.0,
    spec: EnvSpec = ENVS["nav2d"],
):
    """Trajectories of the first held-out goals before and after ``steps`` updates."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        shown, len(policies), figsize=(4 * len(policies), 4 * shown), squeeze=False
    )
    for col, (name, (learner, _, params)) in enumerate(policies.items()):
        adapt = jax.jit(
            lambda p, t, learner=learner: learner.adapt(
                p, t, steps=steps, later_lr_scale=later_lr_scale
            )
        )
        for row in range(shown):
            task = jax.tree.map(lambda x, r=row: x[r], tasks)
            _, result = adapt(params, task)
            ax = axes[row, col]
            for k, color in ((0, "tab:orange"), (steps, "tab:blue")):
                traj = jax.tree.map(lambda x, k=k: np.asarray(x[k]), result.trajectories)
                for i in range(min(5, traj.observations.shape[0])):
                    # the row's first episode (a step-budget row holds several)
                    first = np.cumsum(traj.dones[i]) - traj.dones[i] == 0
                    valid = (traj.masks[i] > 0) & first
                    xy = spec.positions(traj.observations[i][valid])
                    ax.plot(
                        xy[:, 0],
                        xy[:, 1],
                        color=color,
                        lw=1,
                        alpha=0.7,
                        label=f"after {k} steps" if i == 0 else None,
                    )
                    ax.plot(*xy[0], "o", color=color, ms=3)  # the start (random on PointRobot)
            goal = np.asarray(spec.goal_xy(task.env_params))
            ax.plot(*goal, "r*", ms=14, label="goal")
            ax.set_xlim(*spec.limits[0])
            ax.set_ylim(*spec.limits[1])
            ax.set_aspect("equal")
            ax.set_title(
                f"{name}\nreturn {float(result.returns[0]):.1f} -> "
                f"{float(result.returns[steps]):.1f}",
                fontsize=8,
            )
            ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@dataclasses.dataclass(frozen=True)
class PointRobotTrain(Nav2DTrain):
    """:class:`Nav2DTrain` on gymnax's PointRobot (dense reward; see :data:`ENVS`)."""

    workdir: str = "runs/pointrobot/maml"
    env: EnvName = "pointrobot"


@dataclasses.dataclass(frozen=True)
class PointRobotEval(Nav2DEval):
    """:class:`Nav2DEval` with the PointRobot run directories as defaults."""

    workdirs: tuple[str, ...] = ("runs/pointrobot/maml", "runs/pointrobot/pretrain")


@dataclasses.dataclass(frozen=True)
class MetaMazeTrain(Nav2DTrain):
    """:class:`Nav2DTrain` on gymnax's MetaMaze (softmax policy, position observed)."""

    workdir: str = "runs/metamaze/maml"
    env: EnvName = "metamaze"


@dataclasses.dataclass(frozen=True)
class MetaMazeEval(Nav2DEval):
    """:class:`Nav2DEval` with the MetaMaze run directories as defaults."""

    workdirs: tuple[str, ...] = ("runs/metamaze/maml", "runs/metamaze/pretrain")


__all__ = [
    "ENVS",
    "EnvSpec",
    "Nav2DEval",
    "Nav2DTrain",
    "MetaMazeEval",
    "MetaMazeTrain",
    "PointRobotEval",
    "PointRobotTrain",
    "evaluate",
    "load_run",
    "make_policy",
    "paired_difference",
    "train",
]
