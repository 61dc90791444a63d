"""Elastic distortion of images, the augmentation of Simard, Steinkraus and
Platt, "Best practices for convolutional neural networks applied to visual
document analysis" (ICDAR 2003).

Keras ships `keras.layers.RandomElasticTransform`, but in Keras 3.15 its
TensorFlow and JAX kernels draw the x and y displacement fields from the
same seed (so every pixel moves along the diagonal), and TensorFlow's draws
one field for the whole batch inside a model whose batch size is unknown;
this layer draws two independent fields per image.
"""

import math

import keras
from keras import ops


def gaussian_kernel(sigma):
    """The normalised 1-D Gaussian of standard deviation `sigma` pixels,
    truncated at 3 sigma (2 * ceil(3 sigma) + 1 taps)."""
    radius = math.ceil(3 * sigma)
    taps = [math.exp(-0.5 * (i / sigma) ** 2) for i in range(-radius, radius + 1)]
    total = sum(taps)
    return [t / total for t in taps]


def smooth_fields(noise, sigma):
    """Blurs each channel of `noise`, `(batch, height, width, channels)`,
    with a Gaussian of `sigma` pixels (two 1-D passes, zero outside)."""
    taps = ops.convert_to_tensor(gaussian_kernel(sigma), dtype=noise.dtype)
    channels = noise.shape[-1]
    size = taps.shape[0]
    rows = ops.tile(ops.reshape(taps, (size, 1, 1, 1)), (1, 1, channels, 1))
    columns = ops.tile(ops.reshape(taps, (1, size, 1, 1)), (1, 1, channels, 1))
    smoothed = ops.depthwise_conv(noise, rows, padding="same")
    return ops.depthwise_conv(smoothed, columns, padding="same")


def displacement_fields(noise, alpha, sigma):
    """Simard et al.'s displacement, in pixels: `noise`, uniform in [-1, 1]
    with one channel per axis, blurred by a Gaussian of `sigma` pixels and
    scaled by `alpha`."""
    return alpha * smooth_fields(noise, sigma)


def resample_bilinear(images, rows, columns):
    """Samples `images`, `(batch, height, width, channels)`, at the real
    positions `rows`, `columns` (each `(batch, height, width)`), bilinearly,
    with zeros outside the image."""
    batch, height, width, channels = ops.shape(images)
    flat = ops.reshape(images, (-1, channels))
    image_offset = ops.reshape(ops.arange(batch) * (height * width), (-1, 1, 1))
    top, left = ops.floor(rows), ops.floor(columns)
    out = 0.0
    for dy in (0, 1):
        for dx in (0, 1):
            y, x = top + dy, left + dx
            weight = (1 - ops.abs(rows - y)) * (1 - ops.abs(columns - x))
            inside = (y >= 0) & (y <= height - 1) & (x >= 0) & (x <= width - 1)
            y = ops.cast(ops.clip(y, 0, height - 1), "int32")
            x = ops.cast(ops.clip(x, 0, width - 1), "int32")
            pixels = ops.take(flat, image_offset + y * width + x, axis=0)
            weight = ops.where(inside, weight, 0.0)
            out = out + pixels * ops.expand_dims(weight, -1)
    return out


@keras.saving.register_keras_serializable(package="pipelines")
class ElasticDistortion(keras.layers.Layer):
    """Moves every pixel by a random smooth displacement field (training
    only).

    Each image gets its own x and y fields: uniform noise in [-1, 1] per
    pixel, blurred by a Gaussian of `sigma` pixels and scaled by `alpha`.
    Simard et al. used `alpha=34`, `sigma=4` on MNIST, displacements of
    about 1.4 pixels (standard deviation) that vary over about 4 pixels.

    Args:
        alpha: scale of the displacement, in pixels; 0 leaves the images.
        sigma: smoothness of the displacement, in pixels (positive).
        seed: seed of the noise.

    Input shape:
        `(batch, height, width, channels)`.

    Output shape:
        The same.

    Example:

    >>> layer = ElasticDistortion(alpha=34.0, sigma=4.0, seed=0)
    >>> layer(np.zeros((2, 28, 28, 1)), training=True).shape
    (2, 28, 28, 1)
    """

    def __init__(self, alpha=34.0, sigma=4.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        if alpha < 0:
            raise ValueError(f"`alpha` must be at least 0; got {alpha}.")
        if sigma <= 0:
            raise ValueError(f"`sigma` must be positive; got {sigma}.")
        self.alpha = float(alpha)
        self.sigma = float(sigma)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_masking = True

    def call(self, inputs, training=None):
        if not training or self.alpha == 0:
            return inputs
        batch, height, width = ops.shape(inputs)[:3]
        noise = keras.random.uniform(
            (batch, height, width, 2), -1.0, 1.0, dtype=inputs.dtype, seed=self.seed_generator
        )
        shift = displacement_fields(noise, self.alpha, self.sigma)
        grid_rows, grid_columns = ops.meshgrid(
            ops.arange(height, dtype=inputs.dtype), ops.arange(width, dtype=inputs.dtype),
            indexing="ij",
        )
        return resample_bilinear(
            inputs, grid_rows + shift[..., 0], grid_columns + shift[..., 1]
        )

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "sigma": self.sigma, "seed": self.seed}
