"""moe_keras: Mixture-of-Experts layers for Keras 3.

`MoEDense` and `MoEConv2D` route every token (example, sequence position or
pixel) to its top-k of n experts, with optional always-active shared experts,
balancing losses added through `add_loss`, and routing statistics that
`moe_keras.callbacks.ExpertUsage` puts into the training logs.
"""

from moe_keras import callbacks
from moe_keras import dispatch
from moe_keras import distribution
from moe_keras import losses
from moe_keras import routing
from moe_keras import usage
from moe_keras.layers import MoEConv2D
from moe_keras.layers import MoEDense
from moe_keras.layers import MoELayer
from moe_keras.upcycle import upcycle
from moe_keras.usage import routing_counts
from moe_keras.usage import routing_maps

__version__ = "0.1.0"

__all__ = [
    "MoEConv2D",
    "MoEDense",
    "MoELayer",
    "callbacks",
    "dispatch",
    "distribution",
    "losses",
    "routing",
    "routing_counts",
    "routing_maps",
    "upcycle",
    "usage",
]
