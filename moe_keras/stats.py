"""Routing statistics from expert counts: pure NumPy, imports no layer."""

import math

import numpy as np


def summarize_counts(counts, dropped_slots=0.0):
    """Routing statistics of per-expert token-slot counts.

    Args:
        counts: `(n,)` token-slots routed to each expert.
        dropped_slots: slots dropped for lack of capacity.

    Returns:
        A dict: `load` (list of fractions summing to 1, all 0 before any
        token), `entropy` (nats; `log(n)` means perfectly balanced, 0 means
        one expert takes everything), `max_load_ratio` (largest load over the
        ideal `1/n`; 1.0 is perfect), `dead_experts` (experts with no token),
        `dropped_fraction` and `tokens` (slots counted).
    """
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    num_experts = len(counts)
    load = counts / total if total > 0 else np.zeros_like(counts)
    nonzero = load[load > 0]
    # "+ 0.0" turns the -0.0 of a single busy expert into 0.0 for display.
    entropy = float(-(nonzero * np.log(nonzero)).sum()) + 0.0
    return {
        "load": [float(v) for v in load],
        "entropy": entropy,
        "max_entropy": math.log(num_experts),
        "max_load_ratio": float(load.max() * num_experts) if total > 0 else 0.0,
        "dead_experts": int((counts == 0).sum()) if total > 0 else num_experts,
        "dropped_fraction": float(dropped_slots / (total + 1e-12)) if total else 0.0,
        "tokens": float(total),
    }
