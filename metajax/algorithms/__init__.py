"""Meta-learning algorithms: factories returning :class:`MetaLearner` pure functions.

``ALGORITHMS`` maps a name to its factory. The gradient-based ones take
``(loss_fn, inner_lr=..., inner_steps=..., ...)``; ``protonet`` takes
``(embed_fn, num_classes)``. ``proto_maml`` (a model's loss, its features and where its
head lives) is not in the table: the recipes that support it build it themselves.
"""

from collections.abc import Callable

from metajax.algorithms.base import MetaLearner, check_task
from metajax.algorithms.imaml import gauss_newton_curvature, hessian_curvature, imaml
from metajax.algorithms.maml import (
    anil,
    cosine_outer_lr,
    fomaml,
    learned_sgd,
    maml,
    maml_plus_plus,
    meta_sgd,
    multi_step_loss_weights,
    pretrain,
    reptile,
)
from metajax.algorithms.proto_maml import proto_maml, prototype_head
from metajax.algorithms.protonet import class_prototypes, protonet

ALGORITHMS: dict[str, Callable[..., MetaLearner]] = {
    "maml": maml,
    "fomaml": fomaml,
    "anil": anil,
    "meta-sgd": meta_sgd,
    "reptile": reptile,
    "pretrain": pretrain,
    "maml++": maml_plus_plus,
    "learned-sgd": learned_sgd,
    "imaml": imaml,
    "protonet": protonet,
}

__all__ = [
    "ALGORITHMS",
    "MetaLearner",
    "anil",
    "check_task",
    "cosine_outer_lr",
    "fomaml",
    "gauss_newton_curvature",
    "hessian_curvature",
    "imaml",
    "learned_sgd",
    "maml",
    "maml_plus_plus",
    "meta_sgd",
    "multi_step_loss_weights",
    "pretrain",
    "protonet",
    "proto_maml",
    "prototype_head",
    "class_prototypes",
    "reptile",
]
