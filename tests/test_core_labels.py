"""toolkit.core.labels: classes, regions and the ignore label, as nnU-Net v2 reads them."""

import numpy as np
import pytest
import torch

from toolkit.core.labels import (
    ANNOTATED_KEY,
    annotated_batch,
    label_model,
    probabilities_inplace,
    region_batch,
    segmentation_from_probabilities,
    target_mask,
)
from toolkit.errors import ToolkitError

BRATS = {
    "background": 0,
    "whole tumour": [1, 2, 3],
    "tumour core": [2, 3],
    "enhancing tumour": [3],
}


def test_classes_model():
    model = label_model({"background": 0, "liver": 1, "tumour": 2})
    assert not model.has_regions and not model.has_ignore
    assert model.num_outputs == 3
    assert model.names == {1: "liver", 2: "tumour"}
    assert model.regions == {1: (1,), 2: (2,)}
    assert model.values == (0, 1, 2) and model.declared_values == [0, 1, 2]


def test_regions_model_keeps_dataset_order_and_positions_as_keys():
    model = label_model(BRATS, [1, 2, 3])
    assert model.has_regions and model.num_outputs == 3
    assert model.names == {1: "whole tumour", 2: "tumour core", 3: "enhancing tumour"}
    assert model.regions == {1: (1, 2, 3), 2: (2, 3), 3: (3,)}
    assert model.foreground_values == [1, 2, 3]
    assert model.regions_class_order == (1, 2, 3)


def test_ignore_label_is_excluded_from_outputs_and_targets():
    model = label_model({"background": 0, "a": 1, "b": 2, "ignore": 3})
    assert model.ignore == 3 and model.num_outputs == 3
    assert model.names == {1: "a", 2: "b"} and model.declared_values == [0, 1, 2, 3]
    assert model.location_groups()[ANNOTATED_KEY] == (-1, 0, 1, 2)
    # the ignore value has no output, so no label map made from the outputs can hold it
    probabilities = np.random.default_rng(0).random((model.num_outputs, 50)).astype(np.float32)
    assert model.ignore not in segmentation_from_probabilities(probabilities, model)
    assert model.num_outputs == model.ignore
    regions = label_model({**BRATS, "ignore": 4}, [1, 2, 3])
    assert regions.num_outputs == 3 and regions.ignore == 4


@pytest.mark.parametrize(
    "labels, order, phrase",
    [
        (
            {"background": 0, "ignore": 1, "a": 2},
            None,
            "must have the highest value.*\\(3\\), not 1",
        ),
        ({"background": 0, "a": 1, "ignore": 5}, None, "highest value"),
        ({"background": 0, "a": 1, "ignore": [2]}, None, "one integer"),
        (BRATS, None, "regions_class_order' is missing"),
        (BRATS, [1, 2], "has 2 entries but the labels declare 3 regions"),
        (BRATS, [1, 0, 3], "positive label values"),
    ],
)
def test_label_rules_give_one_line_naming_the_file(labels, order, phrase):
    with pytest.raises(ToolkitError, match=phrase) as caught:
        label_model(labels, order, "raw/dataset.json")
    assert "\n" not in str(caught.value) and str(caught.value).startswith("raw/dataset.json: ")


def test_region_probabilities_to_labels_follow_regions_class_order():
    model = label_model(BRATS, [1, 2, 3])
    probabilities = np.zeros((3, 1, 2, 3), dtype=np.float32)
    probabilities[0, 0, 0] = [0.9, 0.9, 0.9]  # whole tumour on the first row
    probabilities[1, 0, 0, 1:] = 0.8  # tumour core inside it
    probabilities[2, 0, 0, 2] = 0.6  # enhancing inside the core
    probabilities[2, 0, 1, 0] = 0.7  # enhancing alone: later regions are written last
    probabilities[0, 0, 1, 1] = 0.5  # exactly 0.5 is not above the threshold
    labels = segmentation_from_probabilities(probabilities, model)
    assert labels.tolist() == [[[1, 2, 3], [3, 0, 0]]]
    assert labels.dtype == np.uint8


def test_class_probabilities_to_labels_are_the_argmax():
    model = label_model({"background": 0, "a": 1, "b": 2})
    probabilities = np.asarray([[0.2, 0.7], [0.5, 0.1], [0.3, 0.2]], dtype=np.float32)
    assert segmentation_from_probabilities(probabilities, model).tolist() == [1, 0]


def test_probabilities_are_softmax_for_classes_and_sigmoid_for_regions():
    logits = np.asarray([[0.0, 2.0], [1.0, -1.0], [-3.0, 0.5]], dtype=np.float32)
    regions = logits.copy()
    probabilities_inplace(regions, label_model(BRATS, [1, 2, 3]))
    assert np.allclose(regions, torch.sigmoid(torch.from_numpy(logits)).numpy(), atol=1e-6)
    classes = logits.copy()
    probabilities_inplace(classes, label_model({"background": 0, "a": 1, "b": 2}))
    assert np.allclose(classes, torch.softmax(torch.from_numpy(logits), 0).numpy(), atol=1e-6)


def test_region_batch_and_annotated_mask():
    model = label_model({**BRATS, "ignore": 4}, [1, 2, 3])
    labels = torch.tensor([[[0, 1, 2, 3, 4]]])
    regions = region_batch(labels, model)
    assert regions.shape == (1, 3, 5)
    assert regions[0].int().tolist() == [[0, 1, 1, 1, 0], [0, 0, 1, 1, 0], [0, 0, 0, 1, 0]]
    assert annotated_batch(labels, model)[0, 0].tolist() == [True] * 4 + [False]
    assert annotated_batch(labels, label_model(BRATS, [1, 2, 3])) is None


def test_target_mask():
    seg = np.asarray([0, 1, 2, 3])
    assert target_mask(seg, (2, 3)).tolist() == [False, False, True, True]
    assert target_mask(seg, (1,)).tolist() == [False, True, False, False]
