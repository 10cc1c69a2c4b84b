"""The peers benchmark's per-round ratio summary (benchmarks/omniglot_vs_peers.py)."""

from __future__ import annotations

import math
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))

import omniglot_vs_peers  # noqa: E402


def _record(peer, round_, seconds, **extra):
    base = {"peer": peer, "workload": "W2-so-1step", "round": round_}
    if peer == "metajax":
        base.update(task_parallel="map", xla_cpu="tuned", cpu_devices=2)
    return {**base, "sec_per_step_median": seconds, **extra}


def test_round_summary_pairs_each_round_and_gives_the_geometric_mean_and_interval():
    results = [
        _record("metajax", 0, 1.0),
        _record("learn2learn", 0, 2.0, allocator="tuned"),
        _record("metajax", 1, 2.0),
        _record("learn2learn", 1, 8.0, allocator="tuned"),
        _record("learn2learn", 2, 9.0, allocator="tuned"),  # no metajax in round 2: left out
        {"peer": "metajax", "workload": "W2-so-1step", "round": 2, "error": "crashed"},
    ]
    (line,) = omniglot_vs_peers.round_summary(results)
    assert line.startswith(
        "W2-so-1step: learn2learn (tuned allocator) / metajax (task_parallel=map"
    )
    assert "rounds 2.00x 4.00x;" in line
    assert f"geometric mean {math.sqrt(8):.2f}x" in line
    # t(0.975, 1 dof) = 12.7062047; the log-ratios' standard deviation is ln(2) / sqrt(2).
    half = 12.7062047 * (math.log(2) / math.sqrt(2)) / math.sqrt(2)
    low, high = math.exp(math.log(math.sqrt(8)) - half), math.exp(math.log(math.sqrt(8)) + half)
    assert f"95% t-interval [{low:.2f}x, {high:.2f}x]" in line
    assert "range 2.00-4.00x over 2 rounds" in line
