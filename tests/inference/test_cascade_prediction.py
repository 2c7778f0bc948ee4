"""The cascade's input at prediction time, as nnU-Net v2's predictor makes it: the first stage's
segmentation exported to the original geometry, then preprocessed as a label map."""

from __future__ import annotations

import numpy as np
import torch
from inference_helpers import make_case, make_plans, save_model_dir

from toolkit.core.cascade import cascade_channels, segmentation_on_grid
from toolkit.core.resampling import resample_probabilities
from toolkit.inference.options import ModelOptions
from toolkit.inference.predictor import Predictor
from toolkit.preprocessing.case import preprocess_case


def _cropped_case(seed: int):
    """A case whose non-zero region is smaller than the image (so preprocessing crops)."""
    image, label, geometry = make_case(seed, shape=(14, 40, 36))
    image[:, :5] = 0
    image[:, :, -4:] = 0
    label[:, :5] = 0
    label[:, :, -4:] = 0
    return image, label, geometry


def test_a_segmentation_reaches_the_grid_as_preprocessing_brings_a_label_map():
    plans = make_plans(cascade=True, transpose_forward=(2, 0, 1))
    configuration = plans.configuration("3d_cascade_fullres")
    image, label, geometry = _cropped_case(3)
    _, seg, props = preprocess_case(image[None], geometry, plans, configuration, seg=label)
    assert props.shape_after_cropping != props.shape_before_cropping  # cropped
    on_grid = segmentation_on_grid(label, plans=plans, configuration=configuration, props=props)
    assert np.array_equal(cascade_channels(plans, on_grid), cascade_channels(plans, seg[0]))
    assert on_grid.shape == tuple(props.shape_after_resampling)


def _striped_logits(shape) -> list[torch.Tensor]:
    """Classes 1 and 2 alternate in stripes two voxels wide along y; class 0 is never the
    largest, but wins where the logits of a stripe border are mixed."""
    y = np.arange(shape[1]).reshape(1, -1, 1) // 2 % 2
    one = torch.from_numpy(np.where(y == 0, 6.0, -6.0) * np.ones(shape)).float()
    return [torch.full(tuple(shape), 4.0), one, -one]


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=0))
    return e / e.sum(axis=0)


def test_the_first_stage_segmentation_is_exported_then_preprocessed_as_a_label_map(
    tmp_path, monkeypatch
):
    plans = make_plans(cascade=True)
    models = tmp_path / "Synth" / "models"
    save_model_dir(models / "3d_lowres", plans, "3d_lowres")
    save_model_dir(models / "3d_cascade_fullres", plans, "3d_cascade_fullres", seed=7)
    options = ModelOptions(device="cpu", use_mirroring=False)
    predictor = Predictor.from_model_dir(models / "3d_cascade_fullres", options)
    first = predictor.previous_stage
    real = Predictor.predict_logits
    inputs = []

    def logits(self, data, on_windows=None):
        if self is first:
            return _striped_logits(data.shape[1:])
        inputs.append(np.asarray(data))
        return real(self, data, on_windows)

    monkeypatch.setattr(Predictor, "predict_logits", logits)
    image, _, geometry = _cropped_case(4)
    automatic = predictor.predict_case(image[None], geometry)

    # what `toolkit predict` with the first stage writes, given back as the previous stage's
    exported = first.predict_case(image[None], geometry, with_probabilities=False).labels
    assert set(np.unique(exported)) == {0, 1, 2}
    given = predictor.predict_case(image[None], geometry, previous_stage=exported)
    assert np.array_equal(automatic.probabilities, given.probabilities)
    assert np.array_equal(inputs[0], inputs[1])

    # the network saw that segmentation preprocessed as a label map ...
    _, _, props = preprocess_case(image[None], geometry, plans, predictor.configuration)
    cascade = plans.configuration("3d_cascade_fullres")
    on_grid = segmentation_on_grid(exported, plans=plans, configuration=cascade, props=props)
    assert np.array_equal(inputs[0][1:], cascade_channels(plans, on_grid))
    # ... not the first stage's probabilities resampled straight to its grid (toolkit before)
    _, _, low_props = preprocess_case(image[None], geometry, plans, first.configuration)
    low = first.configuration
    probabilities = _softmax(
        np.stack([t.numpy() for t in _striped_logits(low_props.shape_after_resampling)])
    )
    old = resample_probabilities(
        probabilities,
        props.shape_after_resampling,
        low.target_spacing,
        cascade.target_spacing,
        low.resampling,
    ).argmax(0)
    assert not np.array_equal(inputs[0][1:], cascade_channels(plans, old))
