"""Elastic distortion: its kernel, fields, resampling and layer."""

import math

import keras
import numpy as np
import pytest

from pipelines.augment import ElasticDistortion
from pipelines.augment import displacement_fields
from pipelines.augment import gaussian_kernel
from pipelines.augment import resample_bilinear
from pipelines.augment import smooth_fields


def test_gaussian_kernel_is_the_normalised_truncated_gaussian():
    taps = gaussian_kernel(1.0)
    # exp(-i^2 / 2) for i = -3..3, divided by their sum 2.505948
    assert len(taps) == 7
    assert taps[3] == pytest.approx(0.399050, abs=1e-6)
    assert taps[0] == pytest.approx(math.exp(-4.5) / 2.505948, rel=1e-5)
    assert len(gaussian_kernel(4.0)) == 25
    assert sum(gaussian_kernel(4.0)) == pytest.approx(1.0)


def test_smoothing_an_impulse_gives_the_outer_product_of_the_kernel():
    noise = np.zeros((1, 15, 15, 2), "float32")
    noise[0, 7, 7, 1] = 1.0
    out = keras.ops.convert_to_numpy(smooth_fields(noise, 1.0))
    taps = np.array(gaussian_kernel(1.0))
    np.testing.assert_allclose(out[0, 4:11, 4:11, 1], np.outer(taps, taps), atol=1e-6)
    assert np.abs(out[0, :, :, 0]).max() == 0.0
    assert out[0, :4].max() == 0.0 and out[0, 11:].max() == 0.0


def test_displacement_std_matches_the_smoothed_uniform_noise():
    # Uniform noise in [-1, 1] has variance 1/3; a separable blur multiplies
    # the variance by (sum of squared taps)^2 away from the edges.
    alpha, sigma = 34.0, 4.0
    noise = keras.random.uniform((256, 40, 40, 2), -1.0, 1.0, seed=0)
    shift = keras.ops.convert_to_numpy(displacement_fields(noise, alpha, sigma))
    expected = alpha * math.sqrt(1 / 3) * sum(t * t for t in gaussian_kernel(sigma))
    assert expected == pytest.approx(1.39, abs=0.01)
    assert shift[:, 20, 20, 0].std() == pytest.approx(expected, rel=0.1)
    assert shift[:, 20, 20, 1].std() == pytest.approx(expected, rel=0.1)
    # The two axes move independently.
    assert abs(np.corrcoef(shift[:, 20, 20, 0], shift[:, 20, 20, 1])[0, 1]) < 0.2


def _grid(batch, height, width, row_shift=0.0, column_shift=0.0):
    rows, columns = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    shape = (batch, height, width)
    return (np.broadcast_to(rows + row_shift, shape).astype("float32"),
            np.broadcast_to(columns + column_shift, shape).astype("float32"))


def test_resampling_at_the_pixel_grid_is_the_identity():
    images = np.random.default_rng(0).random((3, 5, 6, 2)).astype("float32")
    out = resample_bilinear(images, *_grid(3, 5, 6))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(out), images)


def test_resampling_between_pixels_interpolates_and_is_zero_outside():
    images = np.arange(2 * 3 * 4, dtype="float32").reshape(2, 3, 4, 1)
    out = keras.ops.convert_to_numpy(resample_bilinear(images, *_grid(2, 3, 4, 0.5, -1.0)))
    # Sampled half a row down and one column left: the mean of a pixel and
    # the one below it, left of column 0 nothing, and below the last row
    # only half of that row (the other half falls outside).
    np.testing.assert_allclose(out[:, :2, 1:, 0], (images[:, :2, :3, 0] + images[:, 1:, :3, 0]) / 2)
    assert np.all(out[:, :, 0] == 0)
    np.testing.assert_allclose(out[:, 2, 1:, 0], images[:, 2, :3, 0] / 2)


def test_layer_distorts_only_in_training_and_each_image_its_own_way():
    image = np.zeros((28, 28, 1), "float32")
    image[6:22, 12:16] = 1.0
    images = np.stack([image, image])
    layer = ElasticDistortion(34.0, 4.0, seed=3)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(images)), images)
    out = keras.ops.convert_to_numpy(layer(images, training=True))
    assert out.shape == images.shape
    assert np.abs(out - images).max() > 0.5
    assert np.abs(out[0] - out[1]).max() > 0.5
    # Bilinear weights are convex, so the pixels stay in the input's range.
    assert out.min() >= 0.0 and out.max() <= 1.0
    unchanged = ElasticDistortion(0.0, 4.0, seed=3)(images, training=True)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(unchanged), images)


@pytest.mark.parametrize("kwargs,message", [({"alpha": -1.0}, "alpha"), ({"sigma": 0.0}, "sigma")])
def test_layer_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ElasticDistortion(**kwargs)


def test_layer_round_trips_through_config_and_saving(tmp_path):
    layer = ElasticDistortion(12.0, 3.0, seed=7, name="elastic")
    assert ElasticDistortion.from_config(layer.get_config()).get_config() == layer.get_config()
    model = keras.Sequential([keras.Input((28, 28, 1)), layer])
    model.save(tmp_path / "m.keras")
    restored = keras.saving.load_model(tmp_path / "m.keras").layers[0]
    assert (restored.alpha, restored.sigma, restored.seed) == (12.0, 3.0, 7)
