"""`MoEConv2D`: a Mixture-of-Experts drop-in for `keras.layers.Conv2D`."""

import keras
from keras import ops

from moe_keras import dispatch as dispatch_lib
from moe_keras import routing as routing_lib
from moe_keras.dispatch.strategy import CONDCONV_MIN_EXPERTS
from moe_keras.dispatch.strategy import dense_max_experts_per_choice
from moe_keras.dispatch.strategy import DISPATCH_MODES
from moe_keras.layers.moe_layer import MoELayer
from moe_keras.layers.moe_layer import cast_to_compute_dtype
from moe_keras.layers.moe_layer import _positive_int
from moe_keras.layers.moe_layer import reshape_like

ROUTING_MODES = ("sample", "pixel")
DATA_FORMATS = ("channels_last", "channels_first")


def _pair(value, name):
    """An int or a pair of positive ints as a tuple of 2 ints."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    value = tuple(value) if isinstance(value, (tuple, list)) else value
    if (
        not isinstance(value, tuple)
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        raise ValueError(
            f"Received an invalid value for `{name}`, expected a positive "
            f"integer or a tuple of 2 positive integers. Received: {name}={value!r}"
        )
    return value


def conv_output_length(size, kernel, stride, dilation, padding):
    """One spatial output size of a convolution, as `keras.layers.Conv2D`."""
    if size is None:
        return None
    span = (kernel - 1) * dilation + 1
    if padding == "same":
        return -(-size // stride)
    return (size - span) // stride + 1


@keras.saving.register_keras_serializable(package="moe_keras")
class MoEConv2D(MoELayer):
    """Mixture-of-Experts 2D convolution: each expert is a Conv2D kernel.

    All experts share `kernel_size`, `strides`, `padding` and
    `dilation_rate`, with the same semantics as `keras.layers.Conv2D`. The
    experts are linear convolutions; their mixture plus the always-active
    shared experts goes through `activation`, as in CondConv (Yang et al.
    2019). Because convolution is linear in its kernel, mixing the outputs of
    the selected experts equals one convolution with the mixed kernel, which
    is what the sparse path computes.

    Routing:
      * `routing="sample"`: a whole image goes to its top-k experts, chosen by
        a router (`router_type`) on its globally average-pooled input features.
      * `routing="pixel"`: every output position is routed on its own, by a
        1x1-conv router applied to the mean of that position's receptive
        field, so the routing grid matches the output grid for any
        `padding`, `strides` and `dilation_rate`.

    Dispatch:
      * `"dense"`: all experts run as one convolution with `n * filters`
        output channels, then the outputs are mixed. Works for both routings.
      * `"sparse"` (images of a known size). Sample routing: the selected
        experts' kernels are mixed per example and each example is
        convolved once (CondConv), as one batched matmul per kernel tap.
        Pixel routing: every output position's receptive field is a token
        of `MoEDense`'s dropless engine, so each position runs only its k
        experts. Either way the cost does not grow with `n`.
      * `"auto"`: sparse for a known image size, with sample routing from
        `CONDCONV_MIN_EXPERTS` experts and with pixel routing when `n / k`
        is above the backend's `DENSE_MAX_EXPERTS_PER_CHOICE`
        (`moe_keras.dispatch.strategy`); dense otherwise.

    Routing is always dropless. Balancing losses, router noise and
    statistics work as in `MoEDense` (see `MoELayer`).

    Args:
        filters: output channels.
        kernel_size: int or tuple of 2 ints.
        num_experts: routed experts `n`.
        top_k: experts per image (or pixel) `k`.
        num_shared_experts: always-active expert kernels added to the output.
        routing: `"sample"` or `"pixel"`.
        strides: int or tuple of 2 ints.
        padding: `"valid"` or `"same"`.
        data_format: `"channels_last"` or `"channels_first"`; defaults to
            `keras.config.image_data_format()`.
        dilation_rate: int or tuple of 2 ints.
        dispatch: `"auto"`, `"dense"` or `"sparse"` (see above).
        **kwargs: the expert-weight arguments of `MoELayer` (`activation`,
            `use_bias`, `kernel_initializer`, `bias_initializer`,
            `kernel_regularizer`, `bias_regularizer`, `kernel_constraint`,
            `bias_constraint`, as in `Conv2D`, per expert), its routing and
            balancing arguments, and base `Layer` arguments.

    Input shape:
        4D tensor `(batch, rows, cols, channels)` (channels_last) or
        `(batch, channels, rows, cols)` (channels_first).

    Output shape:
        4D tensor `(batch, new_rows, new_cols, filters)` (channels_last) or
        `(batch, filters, new_rows, new_cols)`, as `Conv2D` computes them.

    Example:

    >>> layer = MoEConv2D(8, 3, num_experts=4, top_k=2, padding="same")
    >>> layer(np.zeros((2, 28, 28, 1))).shape
    (2, 28, 28, 8)
    >>> MoEConv2D(8, 3, num_experts=4, routing="pixel")(np.zeros((2, 9, 9, 3))).shape
    (2, 7, 7, 8)
    """

    def __init__(
        self,
        filters,
        kernel_size,
        num_experts,
        top_k=1,
        num_shared_experts=0,
        routing="sample",
        strides=(1, 1),
        padding="valid",
        data_format=None,
        dilation_rate=(1, 1),
        dispatch="auto",
        **kwargs,
    ):
        super().__init__(num_experts=num_experts, top_k=top_k, **kwargs)
        _positive_int(filters, "filters")
        _positive_int(num_shared_experts, "num_shared_experts", allow_zero=True)
        if routing not in ROUTING_MODES:
            raise ValueError(
                "Received an invalid value for `routing`, expected one of "
                f"{ROUTING_MODES}. Received: routing={routing!r}"
            )
        if dispatch not in DISPATCH_MODES:
            raise ValueError(
                "Received an invalid value for `dispatch`, expected one of "
                f"{DISPATCH_MODES}. Received: dispatch={dispatch!r}"
            )
        padding = str(padding).lower()
        if padding not in ("valid", "same"):
            raise ValueError(
                "Received an invalid value for `padding`, expected 'valid' or "
                f"'same'. Received: padding={padding!r}"
            )
        data_format = data_format or keras.config.image_data_format()
        if data_format not in DATA_FORMATS:
            raise ValueError(
                "Received an invalid value for `data_format`, expected one of "
                f"{DATA_FORMATS}. Received: data_format={data_format!r}"
            )
        self.filters = filters
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.num_shared_experts = num_shared_experts
        self.routing = routing
        self.strides = _pair(strides, "strides")
        self.padding = padding
        self.data_format = data_format
        self.dilation_rate = _pair(dilation_rate, "dilation_rate")
        if max(self.strides) > 1 and max(self.dilation_rate) > 1:
            raise ValueError(
                "`strides > 1` is not compatible with `dilation_rate > 1`, as "
                f"in Conv2D. Received: strides={self.strides}, "
                f"dilation_rate={self.dilation_rate}"
            )
        self.dispatch = dispatch
        self.input_spec = keras.layers.InputSpec(min_ndim=4, max_ndim=4)

    @property
    def resolved_dispatch(self):
        """`"dense"` or `"sparse"`, resolving `dispatch="auto"`.

        Sparse means CondConv for sample routing (from `CONDCONV_MIN_EXPERTS`
        experts) and the dropless engine of `MoEDense` for pixel routing
        (from `n / k` above the backend's `DENSE_MAX_EXPERTS_PER_CHOICE`); both need the
        image size at trace time.
        """
        if self.dispatch != "auto":
            return self.dispatch
        if not getattr(self, "_static_image_size", True):
            return "dense"
        if self.routing == "sample":
            sparse = self.num_experts >= CONDCONV_MIN_EXPERTS
        else:
            sparse = self.num_experts / self.top_k > dense_max_experts_per_choice()
        return "sparse" if sparse else "dense"

    def _channel_axis(self):
        return -1 if self.data_format == "channels_last" else 1

    def build(self, input_shape):
        channels = input_shape[self._channel_axis()]
        if channels is None:
            raise ValueError(
                "The channel dimension of the inputs to `MoEConv2D` should be "
                f"defined. Received: input_shape={input_shape}"
            )
        spatial = (
            input_shape[1:3]
            if self.data_format == "channels_last"
            else input_shape[2:4]
        )
        # Both sparse paths slice every kernel tap's window out of the
        # padded image, which needs its size when the layer is traced.
        self._static_image_size = None not in tuple(spatial)
        if self.dispatch == "sparse" and not self._static_image_size:
            raise ValueError(
                "`dispatch='sparse'` needs the rows and columns of the inputs "
                "to be known (`keras.Input((rows, cols, channels))`); use "
                "`dispatch='dense'` or `'auto'` for images of any size. "
                f"Received: input_shape={input_shape}"
            )
        self.compute_output_shape(input_shape)  # a clear error for too small images
        self.build_router(channels)
        self.experts = self._add_experts("expert", self.num_experts, channels)
        self.shared_experts = (
            self._add_experts("shared", self.num_shared_experts, channels)
            if self.num_shared_experts
            else None
        )
        self.input_spec = keras.layers.InputSpec(
            ndim=4, axes={self._channel_axis(): channels}
        )
        self.supports_jit = dispatch_lib.supports_xla(
            self.routing == "pixel" and self.resolved_dispatch == "sparse"
        )

    def _add_experts(self, prefix, count, channels):
        return self.add_expert_weights(
            prefix, count, (*self.kernel_size, channels, self.filters)
        )

    def _conv(self, inputs, kernel):
        return ops.conv(
            inputs,
            kernel,
            strides=self.strides,
            padding=self.padding,
            data_format="channels_last",
            dilation_rate=self.dilation_rate,
        )

    def _router_features(self, inputs):
        """Sample: `(B, C)` pooled features. Pixel: `(B, H', W', C)` means of
        every output position's receptive field."""
        inputs = ops.cast(inputs, "float32")
        if self.routing == "sample":
            return ops.mean(inputs, axis=(1, 2))
        channels = inputs.shape[-1]
        rows, cols = self.kernel_size
        # A depthwise conv with a constant kernel is the receptive-field mean,
        # on the exact grid of the expert convolutions.
        averaging = ops.full((rows, cols, channels, 1), 1.0 / (rows * cols))
        return ops.depthwise_conv(
            inputs,
            averaging,
            strides=self.strides,
            padding=self.padding,
            data_format="channels_last",
            dilation_rate=self.dilation_rate,
        )

    def _route_inputs(self, inputs, training):
        features = self._router_features(inputs)
        tokens = ops.reshape(features, (-1, features.shape[-1]))
        return features, self.route(tokens, training=training)

    def call(self, inputs, training=None):
        inputs = cast_to_compute_dtype(inputs, self.compute_dtype)
        if self.data_format == "channels_first":
            inputs = ops.transpose(inputs, (0, 2, 3, 1))
        features, result = self._route_inputs(inputs, training)
        combine = routing_lib.combine_weights(
            result.expert_weights, result.expert_indices, self.num_experts
        )
        combine = ops.cast(combine, self.compute_dtype)
        sparse = self.resolved_dispatch == "sparse"
        if sparse and self.routing == "sample":
            outputs = self._mixed_kernel_conv(inputs, combine)
        elif sparse and dispatch_lib.dropless_runs(result.expert_indices.shape[0]):
            outputs = self._pixel_dropless_conv(inputs, result, training)
        else:
            outputs = self._all_experts_conv(inputs, features, combine)
        if self.shared_experts is not None:
            kernel = ops.sum(self.shared_experts["kernel"], axis=0)
            outputs = outputs + self._conv(inputs, kernel)
            if self.use_bias:
                outputs = outputs + ops.sum(self.shared_experts["bias"], axis=0)
        outputs = self.activation(outputs)
        if self.data_format == "channels_first":
            outputs = ops.transpose(outputs, (0, 3, 1, 2))
        return outputs

    def _all_experts_conv(self, inputs, features, combine):
        """All experts as one wide convolution, then mixed per sample/pixel."""
        kernel = self.experts["kernel"]
        rows, cols, channels = kernel.shape[1:4]
        wide = ops.reshape(
            ops.transpose(kernel, (1, 2, 3, 0, 4)),
            (rows, cols, channels, self.num_experts * self.filters),
        )
        outputs = self._conv(inputs, wide)
        outputs = reshape_like(outputs, outputs, (self.num_experts, self.filters))
        if self.use_bias:
            outputs = outputs + self.experts["bias"]
        if self.routing == "sample":
            return ops.einsum("bhwef,be->bhwf", outputs, combine)
        combine = reshape_like(combine, outputs[..., 0, :], (self.num_experts,))
        return ops.einsum("bhwef,bhwe->bhwf", outputs, combine)

    def _tap_windows(self, inputs):
        """Zero-pads channels-last `inputs` as `padding` asks and yields, for
        every kernel tap `(i, j)`, the `(B, H', W', C)` inputs that the tap
        multiplies at the `H' x W'` output positions (static sizes)."""
        pads, outs = [], []
        for size, kernel, stride, dilation in zip(
            inputs.shape[1:3], self.kernel_size, self.strides, self.dilation_rate
        ):
            span = (kernel - 1) * dilation + 1
            out = conv_output_length(size, kernel, stride, dilation, self.padding)
            # Keras/TensorFlow "same": an odd extra row goes at the end.
            total = max((out - 1) * stride + span - size, 0)
            pads.append((total // 2, total - total // 2) if self.padding == "same" else (0, 0))
            outs.append(out)
        padded = ops.pad(inputs, ((0, 0), *pads, (0, 0)))
        (rows, cols), (row_stride, col_stride) = outs, self.strides
        for i in range(self.kernel_size[0]):
            for j in range(self.kernel_size[1]):
                top, left = i * self.dilation_rate[0], j * self.dilation_rate[1]
                yield i, j, padded[
                    :,
                    top : top + (rows - 1) * row_stride + 1 : row_stride,
                    left : left + (cols - 1) * col_stride + 1 : col_stride,
                    :,
                ]

    def _mixed_kernel_conv(self, inputs, combine):
        """CondConv: every example is convolved once, with the mixture of its
        experts' kernels.

        The convolution is written as a sum over kernel taps of batched
        matmuls, `sum_ij window_ij(x_b) @ K_b[i, j]`, rather than as one
        convolution with the batch folded into groups: XLA runs the
        gradient of a batch-grouped convolution as a loop, while batched
        matmuls and their gradients are fast everywhere. (The grouped
        version's timings were never committed as a record; the taps'
        are in `benchmarks/results/`.)
        """
        kernel = ops.einsum("be,ehwcf->bhwcf", combine, self.experts["kernel"])
        outputs = None
        for i, j, window in self._tap_windows(inputs):
            tap = ops.einsum("bhwc,bcf->bhwf", window, kernel[:, i, j])
            outputs = tap if outputs is None else outputs + tap
        if self.use_bias:
            bias = ops.matmul(combine, self.experts["bias"])
            outputs = outputs + bias[:, None, None, :]
        return outputs

    def _pixel_dropless_conv(self, inputs, result, training=None):
        """Per-pixel routing, sparse: every output position's receptive
        field (its im2col patch) is a token, each expert a linear map of
        the patch, and the patches go through the same dropless engine as
        `MoEDense`'s tokens, so each position runs only its k experts."""
        windows = [window for _, _, window in self._tap_windows(inputs)]
        # Tap-major, then channel: the order of `kernel.reshape(n, -1, f)`.
        patches = ops.concatenate(windows, axis=-1)
        tokens = ops.reshape(patches, (-1, patches.shape[-1]))
        kernel = ops.reshape(
            self.experts["kernel"], (self.num_experts, -1, self.filters)
        )
        bias = self.experts["bias"] if self.use_bias else None

        def run_buffers(buffers, layout):
            outputs = ops.einsum("etd,edf->etf", buffers, kernel)
            return outputs if bias is None else outputs + bias[:, None, :]

        def run_rows(rows, plan, layout):
            outputs = dispatch_lib.grouped_matmul(rows, kernel, plan.group_sizes)
            if bias is None:
                return outputs
            return outputs + dispatch_lib.take_row_bias(bias, plan)

        mixed = dispatch_lib.dropless_mixture(
            tokens,
            result.expert_indices,
            result.expert_weights,
            self.num_experts,
            run_buffers,
            run_rows,
            rematerialize=training is not False,
        )
        return reshape_like(mixed, patches, (self.filters,))

    def expert_choices(self, inputs):
        """Inference-time top-k expert indices: `(B, k)` for sample routing,
        `(B, H', W', k)` for pixel routing."""
        if self.data_format == "channels_first":
            inputs = ops.transpose(inputs, (0, 2, 3, 1))
        features, result = self._route_inputs(inputs, training=False)
        return reshape_like(result.expert_indices, features, (self.top_k,))

    def compute_output_shape(self, input_shape):
        if self.data_format == "channels_last":
            batch, rows, cols = input_shape[0], input_shape[1], input_shape[2]
        else:
            batch, rows, cols = input_shape[0], input_shape[2], input_shape[3]
        rows, cols = (
            conv_output_length(size, kernel, stride, dilation, self.padding)
            for size, kernel, stride, dilation in zip(
                (rows, cols), self.kernel_size, self.strides, self.dilation_rate
            )
        )
        if any(size is not None and size <= 0 for size in (rows, cols)):
            raise ValueError(
                "Computed output size would be zero or negative: the inputs "
                "are smaller than the span of the kernel. Received: "
                f"input_shape={tuple(input_shape)}, kernel_size={self.kernel_size}, "
                f"dilation_rate={self.dilation_rate}, strides={self.strides}, "
                f"padding={self.padding}"
            )
        if self.data_format == "channels_last":
            return (batch, rows, cols, self.filters)
        return (batch, self.filters, rows, cols)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "kernel_size": self.kernel_size,
                "num_shared_experts": self.num_shared_experts,
                "routing": self.routing,
                "strides": self.strides,
                "padding": self.padding,
                "data_format": self.data_format,
                "dilation_rate": self.dilation_rate,
                "dispatch": self.dispatch,
            }
        )
        return config
