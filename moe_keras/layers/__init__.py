"""The Mixture-of-Experts layers."""

from moe_keras.layers.moe_conv2d import MoEConv2D
from moe_keras.layers.moe_dense import MoEDense
from moe_keras.layers.moe_layer import MoELayer
from moe_keras.layers.moe_layer import Routing
