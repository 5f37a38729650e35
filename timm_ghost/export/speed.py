"""How fast verified exports run on this machine: throughput of several loaded artifacts measured side by side.

:func:`measure_speeds` is what ``export`` uses for its int8-against-fp32 record and ``--format auto`` for its table.
The runs are interleaved (every artifact runs once per round, rounds repeated), so that a change of load or clock
during the measurement touches all of them alike; the median round decides. These are seconds of a few calls each:
a ranking on this CPU at this moment, not a benchmark (``benchmarks/`` has those).
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Dict, Mapping, Sequence

import numpy as np

__all__ = ['measure_speeds', 'METHOD']

ROUNDS = 5
ROUND_S = 0.2
WARMUP = 2
METHOD = (f'images/s, median of {ROUNDS} interleaved rounds of at least {ROUND_S} s each after {WARMUP} warm-up '
          'calls, N(0, 1) input, the runtime loaded as load_export loads it')


def measure_speeds(runs: Mapping[str, Callable[[np.ndarray], Any]], batches: Sequence[int],
                   input_size: Sequence[int], *, rounds: int = ROUNDS, round_s: float = ROUND_S,
                   warmup: int = WARMUP) -> Dict[str, Dict[str, float]]:
    """``{name: {str(batch): images per second}}`` of every ``runs[name]`` (a function of an NCHW float32 array) at
    each batch size of ``batches``, on inputs of ``input_size`` ``(C, H, W)``, measured side by side."""
    if not runs:
        raise ValueError('runs: expected at least one loaded artifact to time')
    if not batches or any(int(b) < 1 for b in batches):
        raise ValueError(f'batches: expected positive batch sizes, got {list(batches)!r}')
    speeds: Dict[str, Dict[str, float]] = {name: {} for name in runs}
    rng = np.random.default_rng(0)
    for batch in dict.fromkeys(int(b) for b in batches):
        x = rng.standard_normal((batch, *input_size)).astype(np.float32)
        for run in runs.values():
            for _ in range(warmup):
                run(x)
        latencies: Dict[str, list] = {name: [] for name in runs}
        for _ in range(rounds):
            for name, run in runs.items():
                calls, start = 0, time.perf_counter()
                while True:
                    run(x)
                    calls += 1
                    elapsed = time.perf_counter() - start
                    if elapsed >= round_s:
                        break
                latencies[name].append(elapsed / calls)
        for name, times in latencies.items():
            speeds[name][str(batch)] = round(batch / statistics.median(times), 1)
    return speeds
