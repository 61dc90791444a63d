"""How the benchmarks time a call: the median wall time of repeated calls
after untimed warm-up calls."""

import statistics
import time


def median_ms(call, steps, warmup):
    """Median milliseconds of `steps` calls of `call()` after `warmup`
    untimed ones. `call` must wait for its result (asynchronous backends
    return before the work is done)."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)
