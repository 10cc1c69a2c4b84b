"""Environments in the gymnax API whose parameters are the task (meta-RL)."""

from metajax.envs.bandit import BanditParams, BernoulliBandit, sample_bandit_params
from metajax.envs.nav2d import Nav2D, Nav2DParams, Nav2DState, sample_nav2d_params

__all__ = [
    "BanditParams",
    "BernoulliBandit",
    "sample_bandit_params",
    "Nav2D",
    "Nav2DParams",
    "Nav2DState",
    "sample_nav2d_params",
]
