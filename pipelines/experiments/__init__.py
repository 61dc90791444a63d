"""The MoE study: collapse, balancing, experts, datasets, specialisation,
the gating diagnosis, and at scale on Fashion-MNIST the data-size sweep
(`datasize`), many experts (`experts_scale`) and conv experts
(`conv_experts`), each run kept as a JSON record (`run_store`).

`python -m pipelines.experiments <name> [--out DIR] [--seeds N] [--epochs N]
[--dataset ...] [--quick]` trains each configuration under several seeds
(stratified validation split for early stopping, separate test set for the
reported number), writes per-seed and summary CSVs and PNG figures, and
`report` gathers them into `reports/moe_study.md`.
"""

__all__ = ["main"]


def main(argv=None):
    """`python -m pipelines.experiments`; see `pipelines.experiments.cli`."""
    # Imported here, so that `pipelines.experiments.router_saturation` and
    # the runner load without the study's report and plotting stack.
    from pipelines.experiments.cli import main as cli_main

    return cli_main(argv)
