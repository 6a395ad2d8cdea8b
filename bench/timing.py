"""
The timing loop the micro-benchmarks share.
"""

from __future__ import annotations

import time
from typing import Callable


def measure(run: Callable[[int], None], seconds: float) -> float:
    """
    Operations per second of C{run}, best of a few rounds of about C{seconds}.
    """
    n = 1000
    while True:
        start = time.process_time()
        run(n)
        elapsed = time.process_time() - start
        if elapsed > seconds / 5:
            break
        n *= 2
    best = 0.0
    for _ in range(5):
        start = time.process_time()
        run(n)
        elapsed = time.process_time() - start
        best = max(best, n / elapsed)
    return best
