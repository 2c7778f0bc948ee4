"""Normalization by channel name, against nnU-Net v2 2.8.1.

The golden values were computed once with the reference's own classes
(``nnunetv2/preprocessing/normalization/default_normalization_schemes.py`` and
``map_channel_name_to_normalization.get_normalization_scheme``, in bench/.venv-nnunet) on the
seeded arrays that :func:`_arrays` rebuilds: for each scheme the float64 sum of the output,
element ``[1, 2, 3]``, the minimum and the maximum.
"""

import numpy as np
import pytest

from toolkit.core.normalization import (
    NNUNET_CLASS_NAMES,
    SCHEMES,
    Normalization,
    may_use_nonzero_mask,
    normalize_channel,
    scheme_of_channel,
    scheme_of_nnunet_class,
)
from toolkit.errors import ToolkitError
from toolkit.planning.rules import channel_normalization

# get_normalization_scheme(name).__name__ of the reference, per channel name
REFERENCE_MAPPING = {
    "CT": "CTNormalization",
    "ct": "CTNormalization",
    "noNorm": "NoNormalization",
    "NONORM": "NoNormalization",
    "zscore": "ZScoreNormalization",
    "ZScore": "ZScoreNormalization",
    "rescale_to_0_1": "RescaleTo01Normalization",
    "Rescale_To_0_1": "RescaleTo01Normalization",
    "rgb_to_0_1": "RGBTo01Normalization",
    "RGB_to_0_1": "RGBTo01Normalization",
    "R": "ZScoreNormalization",
    "G": "ZScoreNormalization",
    "B": "ZScoreNormalization",
    "T2": "ZScoreNormalization",
    "MRI": "ZScoreNormalization",
    "rgb": "ZScoreNormalization",
    "rescale": "ZScoreNormalization",
}
CT_PROPERTIES = {"mean": 95.5, "std": 20.25, "lower_bound": 40.0, "upper_bound": 160.0}
# scheme -> (sum, element [1, 2, 3], min, max) of the reference's output
GOLDEN = {
    "ct": (79.02573233563453, 1.2575151920318604, -2.7407407760620117, 3.185185194015503),
    "zscore": (
        -0.00011588691268116236,
        0.6574227213859558,
        -2.8797266483306885,
        2.738530397415161,
    ),
    "zscore_mask": (2.2251391783356667e-05, 0.0, -2.771763324737549, 2.9060068130493164),
    "none": (33567.66059398651, 120.96468353271484, 7.650042533874512, 187.63418579101562),
    "rescale_to_0_1": (172.22209692373872, 0.6295812726020813, 0.0, 1.0),
    "rgb_to_0_1": (159.8509837151505, 0.9725490212440491, 0.0, 1.0),
}


def _arrays():
    rng = np.random.default_rng(13)
    image = rng.normal(100.0, 30.0, size=(6, 7, 8)).astype(np.float32)
    rgb = rng.integers(0, 256, size=(6, 7, 8)).astype(np.float32)
    outside = rng.random((6, 7, 8)) < 0.3  # the reference's seg == -1
    return image, rgb, outside


def _figures(out: np.ndarray):
    return (
        float(out.astype(np.float64).sum()),
        float(out[1, 2, 3]),
        float(out.min()),
        float(out.max()),
    )


@pytest.mark.parametrize("name", sorted(REFERENCE_MAPPING))
def test_channel_names_map_as_the_reference(name):
    assert NNUNET_CLASS_NAMES[scheme_of_channel(name)] == REFERENCE_MAPPING[name]


def test_every_scheme_has_an_nnunet_class_and_back():
    assert set(NNUNET_CLASS_NAMES) == set(SCHEMES)
    for scheme, name in NNUNET_CLASS_NAMES.items():
        assert scheme_of_nnunet_class(name) == scheme
    assert scheme_of_nnunet_class("MyNormalization") is None
    assert [s for s in SCHEMES if may_use_nonzero_mask(s)] == ["zscore"]


@pytest.mark.parametrize("key", ["ct", "none", "rescale_to_0_1", "rgb_to_0_1"], ids=lambda k: k)
def test_elementwise_schemes_equal_the_reference(key):
    image, rgb, _ = _arrays()
    norm = Normalization(key, **(CT_PROPERTIES if key == "ct" else {}))
    source = rgb if key == "rgb_to_0_1" else image
    out = normalize_channel(source, norm, None)
    assert out.dtype == np.float32
    # the same float32 operations in the same order: equal to the last bit
    assert _figures(out) == GOLDEN[key]
    assert out is not source  # the input is left alone


def test_zscore_equals_the_reference():
    image, _, outside = _arrays()
    out = normalize_channel(image, Normalization("zscore"), None)
    # statistics in float64 here, float32 in the reference: equal to float32 precision
    np.testing.assert_allclose(_figures(out)[1:], GOLDEN["zscore"][1:], rtol=1e-5)
    assert abs(_figures(out)[0] - GOLDEN["zscore"][0]) < 1e-3
    masked = image * ~outside
    out = normalize_channel(masked, Normalization("zscore", use_nonzero_mask=True), ~outside)
    assert np.all(out[outside] == 0)
    np.testing.assert_allclose(_figures(out)[1:], GOLDEN["zscore_mask"][1:], rtol=1e-5)
    assert abs(_figures(out)[0] - GOLDEN["zscore_mask"][0]) < 1e-3


def test_rgb_outside_0_255_is_a_one_line_error():
    _, rgb, _ = _arrays()
    with pytest.raises(ToolkitError, match="0..255"):
        normalize_channel(rgb + 1, Normalization("rgb_to_0_1"), None)
    with pytest.raises(ToolkitError, match="from -1"):
        normalize_channel(rgb - 1, Normalization("rgb_to_0_1"), None)


def test_rescale_of_a_constant_image_is_zero():
    out = normalize_channel(np.full((3, 4), 7.0), Normalization("rescale_to_0_1"), None)
    assert np.all(out == 0)


def test_planner_rule_mask_only_for_zscore():
    for name in ("T2", "R", "zscore"):
        assert channel_normalization(name, 0.6, 0, 1, 0, 1).use_nonzero_mask
        assert not channel_normalization(name, 0.9, 0, 1, 0, 1).use_nonzero_mask
    for name in ("rescale_to_0_1", "RGB_to_0_1", "noNorm"):
        norm = channel_normalization(name, 0.6, 0, 1, 0, 1)
        assert not norm.use_nonzero_mask and norm.scheme == scheme_of_channel(name)
    ct = channel_normalization("ct", 0.6, 10.0, 5.0, -100.0, 200.0)
    assert (ct.scheme, ct.use_nonzero_mask, ct.lower_bound, ct.upper_bound) == (
        "ct",
        False,
        -100.0,
        200.0,
    )
