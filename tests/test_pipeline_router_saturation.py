"""The router-saturation diagnostic: its statistic and its report."""

import numpy as np

from moe_keras import MoEDense
from pipelines.experiments import router_saturation


def test_scaled_linear_router_saturates_where_cosine_does_not():
    features = np.random.default_rng(0).normal(size=(64, 32)).astype("float32")
    stats = {}
    for router_type in ("linear", "cosine"):
        layer = MoEDense(4, num_experts=5, top_k=3, router_type=router_type)
        layer.build(features.shape)
        # What Adam does to a wide linear router: every weight grows.
        layer.router_kernel.assign(20 * layer.router_kernel)
        stats[router_type] = router_saturation.mixing_statistics(layer, features)
    linear_std, linear_weights = stats["linear"]
    cosine_std, cosine_weights = stats["cosine"]
    assert linear_weights.shape == (3,)
    np.testing.assert_allclose(linear_weights.sum(), 1.0, rtol=1e-5)
    assert linear_weights[0] > 0.95 and linear_std > 10
    assert cosine_weights[0] < 0.8 and cosine_std < 10


def test_quick_run_writes_table_and_csv(tmp_path, capsys):
    out = tmp_path / "router.md"
    assert router_saturation.main(["--quick", "--epochs", "1", "--out", str(out)]) == 0
    text = out.read_text()
    assert text.count("| 1 |") == 4
    assert "cosine router" in text and "dense h192" in text
    rows = out.with_suffix(".csv").read_text().splitlines()
    assert rows[0] == ",".join(router_saturation.EPOCH_COLUMNS)
    assert len(rows) == 5
    moe_weights = [float(w) for w in rows[-1].split(",")[-1].split()]
    assert len(moe_weights) == 3 and abs(sum(moe_weights) - 1) < 1e-3
