"""`segic_jax.ops.resize` against `torch.nn.functional.interpolate`."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segic_jax.ops.resize import interpolation_matrix, resize

SIZES = [
    (37, 37, 64, 64),  # DINOv2 positional embedding at 896
    (37, 37, 16, 46),
    (64, 64, 224, 224),  # features for the similarity map
    (224, 224, 896, 896),  # similarity map to the prompt size
    (896, 896, 64, 64),  # reference mask to the feature grid
    (13, 7, 5, 29),
    (100, 60, 33, 17),
    (1, 4, 3, 1),
]
SCALES = [
    (37, 37, (64.1 / 37, 64.1 / 37)),  # hub DINOv2's offset kludge
    (37, 37, (16.1 / 37, 46.1 / 37)),
    (256, 256, (3.5, 3.5)),  # decoder logits to 896
    (50, 70, (0.3, 0.77)),
    (10, 10, (2.0, 2.0)),
]
METHODS = [("bilinear", False), ("bilinear", True), ("bicubic", False), ("bicubic", True)]


def _compare(x, ours, **torch_kwargs):
    ref = F.interpolate(torch.from_numpy(x), align_corners=False, **torch_kwargs).numpy()
    got = np.asarray(ours).transpose(0, 3, 1, 2)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("method,antialias", METHODS)
@pytest.mark.parametrize("h,w,oh,ow", SIZES)
def test_size_semantics_match_torch(rng, method, antialias, h, w, oh, ow):
    x = rng.standard_normal((2, 3, h, w)).astype(np.float32)
    out = resize(x.transpose(0, 2, 3, 1), size=(oh, ow), method=method, antialias=antialias)
    _compare(x, out, size=(oh, ow), mode=method, antialias=antialias)


@pytest.mark.parametrize("method,antialias", METHODS)
@pytest.mark.parametrize("h,w,factors", SCALES)
def test_scale_factor_semantics_match_torch(rng, method, antialias, h, w, factors):
    x = rng.standard_normal((1, 2, h, w)).astype(np.float32)
    out = resize(x.transpose(0, 2, 3, 1), scale_factor=factors, method=method, antialias=antialias)
    _compare(x, out, scale_factor=factors, mode=method, antialias=antialias)


def test_scale_factor_differs_from_size_when_the_ratio_is_not_exact(rng):
    # 37 -> 64 with factor 64.1/37 samples other positions than size=64: the port must not
    # collapse the two.
    by_factor = interpolation_matrix(37, 64, "bicubic", 64.1 / 37)
    by_size = interpolation_matrix(37, 64, "bicubic")
    assert np.abs(by_factor - by_size).max() > 1e-3


def test_downsampling_does_not_antialias_unless_asked():
    # 9 -> 3 bilinear without antialiasing samples exactly pixels 1, 4, 7 of each axis.
    x = np.zeros((1, 9, 9, 1), np.float32)
    x[0, 1::3, 1::3] = 1.0
    np.testing.assert_array_equal(np.asarray(resize(x, size=(3, 3))), np.ones((1, 3, 3, 1)))
    assert np.asarray(resize(x, size=(3, 3), antialias=True)).max() < 0.5


def test_numpy_inputs_are_resized_on_the_host(rng):
    x = rng.standard_normal((1, 37, 23, 2)).astype(np.float32)
    on_host = resize(x, scale_factor=(1.7, 0.6), method="bicubic")
    assert isinstance(on_host, np.ndarray)
    np.testing.assert_allclose(on_host, np.asarray(resize(jnp.asarray(x), scale_factor=(1.7, 0.6), method="bicubic")), atol=1e-5)


def test_bad_arguments_are_named():
    x = np.zeros((1, 4, 4, 1), np.float32)
    with pytest.raises(ValueError, match="exactly one"):
        resize(x)
    with pytest.raises(ValueError, match="method"):
        resize(x, size=(2, 2), method="nearest")


@pytest.mark.parametrize("in_size,out_size,padded,scale", [
    (37, 112, 128, 112 / 37), (300, 112, 112, 112 / 300), (90, 90, 128, 1.0), (1, 5, 8, None), (129, 7, 7, None),
    (640, 896, 896, 896 / 640),
])
def test_gather_taps_equal_the_dense_matrix_then_zero_padding(in_size, out_size, padded, scale):
    import jax.numpy as jnp

    from segic_jax.ops.resize import interpolation_matrix, interpolation_taps, resample_taps

    x = np.random.default_rng(in_size).normal(size=(4, in_size, 3)).astype(np.float32)
    index, weight = interpolation_taps(in_size, out_size, padded, scale_factor=scale)
    got = np.asarray(resample_taps(jnp.asarray(x), jnp.asarray(index), jnp.asarray(weight), axis=1))
    dense = np.einsum("oi,bic->boc", interpolation_matrix(in_size, out_size, "bilinear", scale), x.astype(np.float64))
    assert got.shape == (4, padded, 3)
    np.testing.assert_allclose(got[:, :out_size], dense, rtol=0, atol=1e-5)
    assert not got[:, out_size:].any()
