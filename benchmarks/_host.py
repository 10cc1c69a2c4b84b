"""Which CPU a benchmark ran on (no jax import: the peers' parent processes use it too).

Sessions land on different hosts (a 2-core Xeon with 2 MiB of L2 per core on
2026-11-29, a 2-core AMD EPYC with 512 KiB on 2026-12-07), so every result records the
CPU model and its caches; ``platform.processor()`` only says ``x86_64``.
"""

from __future__ import annotations

import os
import platform


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def cpu_facts() -> dict:
    """``cpu_model`` (``/proc/cpuinfo``), ``l2_per_core`` and ``l3`` (sysfs, e.g. ``"512K"``)."""
    model = None
    text = _read("/proc/cpuinfo") or ""
    for line in text.splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    caches = {}
    base = "/sys/devices/system/cpu/cpu0/cache"
    for index in ("index2", "index3"):
        level = _read(f"{base}/{index}/level")
        size = _read(f"{base}/{index}/size")
        if level and size:
            caches["l2_per_core" if level == "2" else f"l{level}"] = size
    return {"cpu_model": model or platform.processor() or platform.machine(), **caches}


def describe() -> str:
    """``"AMD EPYC (L2 512K per core, L3 32768K)"``: the CPU, for a table's header."""
    facts = cpu_facts()
    parts = [f"L2 {facts['l2_per_core']} per core"] if "l2_per_core" in facts else []
    parts += [f"L3 {facts['l3']}"] if "l3" in facts else []
    return facts["cpu_model"] + (f" ({', '.join(parts)})" if parts else "")


if __name__ == "__main__":
    print(describe(), os.cpu_count(), "cores")
