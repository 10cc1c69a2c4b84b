"""metajax: meta-learning in JAX at accelerator scale.

Pure functions define per-example and masked losses; ``jax.grad`` through inner
updates yields meta-gradients; ``jit``, ``vmap`` and sharding compile the whole
meta-training step.

Example:
  >>> import metajax as mj
  >>> maml = mj.maml(loss_fn, inner_lr=0.01, inner_steps=1)
  >>> loss, aux = maml.loss(params, mj.Task(support=mj.Batch(x, y), query=mj.Batch(xq, yq)))
  >>> step = mj.make_train_step(maml, optax.adam(1e-3))
"""

from metajax import inner, losses, parallel, runner, running_stats
from metajax.algorithms import (
    ALGORITHMS,
    MetaLearner,
    anil,
    cosine_outer_lr,
    fomaml,
    gauss_newton_curvature,
    hessian_curvature,
    imaml,
    learned_sgd,
    maml,
    maml_plus_plus,
    meta_sgd,
    multi_step_loss_weights,
    pretrain,
    proto_maml,
    protonet,
    reptile,
)
from metajax.checkpoint import Checkpointer
from metajax.inner import InnerLoop, InnerResult, InnerState, adapt, make_inner_loop
from metajax.losses import (
    accuracy,
    make_loss,
    mask_tokens,
    masked_token_loss,
    softmax_cross_entropy,
    squared_error,
    weighted_mean,
)
from metajax.running_stats import RunningStats
from metajax.runtime import (
    cpu_devices,
    enable_compilation_cache,
    tune_host_allocator,
    tune_xla_cpu,
)
from metajax.tasks import Batch, Task
from metajax.train import (
    TrainState,
    init_train_state,
    jit_train_step,
    make_eval_step,
    make_train_step,
    map_tasks,
    repeat_step,
)

__version__ = "0.1.0"

__all__ = [
    "ALGORITHMS",
    "Batch",
    "Checkpointer",
    "InnerLoop",
    "InnerResult",
    "InnerState",
    "MetaLearner",
    "RunningStats",
    "Task",
    "TrainState",
    "accuracy",
    "adapt",
    "anil",
    "cosine_outer_lr",
    "fomaml",
    "gauss_newton_curvature",
    "hessian_curvature",
    "imaml",
    "init_train_state",
    "inner",
    "jit_train_step",
    "losses",
    "runner",
    "running_stats",
    "make_eval_step",
    "make_inner_loop",
    "make_loss",
    "make_train_step",
    "map_tasks",
    "mask_tokens",
    "masked_token_loss",
    "learned_sgd",
    "maml",
    "maml_plus_plus",
    "meta_sgd",
    "multi_step_loss_weights",
    "parallel",
    "pretrain",
    "protonet",
    "proto_maml",
    "repeat_step",
    "reptile",
    "softmax_cross_entropy",
    "squared_error",
    "cpu_devices",
    "enable_compilation_cache",
    "tune_host_allocator",
    "tune_xla_cpu",
    "weighted_mean",
]
