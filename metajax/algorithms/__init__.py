"""Meta-learning algorithms: factories returning :class:`MetaLearner` pure functions."""

from metajax.algorithms.base import MetaLearner, check_task
from metajax.algorithms.maml import ALGORITHMS, anil, fomaml, maml, meta_sgd, pretrain, reptile

__all__ = [
    "ALGORITHMS",
    "MetaLearner",
    "anil",
    "check_task",
    "fomaml",
    "maml",
    "meta_sgd",
    "pretrain",
    "reptile",
]
