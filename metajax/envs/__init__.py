"""Environments in the gymnax API whose parameters are the task (meta-RL).

gymnax's own PointRobot, MetaMaze and bandits come through :mod:`metajax.envs.gymnax_adapter`
(``make_gymnax_env``, ``make_gymnax_bandit``; gymnax itself is the optional ``metajax[rl]`` dependency and is
imported only when an environment is made).
"""

from metajax.envs.bandit import BanditParams, BernoulliBandit, sample_bandit_params
from metajax.envs.gymnax_adapter import GymnaxMetaEnv, GymnaxTaskParams, make_gymnax_env
from metajax.envs.nav2d import Nav2D, Nav2DParams, Nav2DState, sample_nav2d_params

__all__ = [
    "BanditParams",
    "BernoulliBandit",
    "sample_bandit_params",
    "GymnaxMetaEnv",
    "GymnaxTaskParams",
    "make_gymnax_env",
    "Nav2D",
    "Nav2DParams",
    "Nav2DState",
    "sample_nav2d_params",
]
