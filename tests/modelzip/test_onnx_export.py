"""``export-model --format onnx``: each network's inference graph gives torch's logits.

The graphs are exported from randomly initialised networks of small plans (plain and
residual-encoder U-Nets, classes and regions, a cascade's two stages, a 2D one) and run by
ONNX Runtime and by OpenVINO (float32 forced) on random batches of two sizes (the batch axis
is dynamic); the logits must equal torch's within 1e-3.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from inference_helpers import make_plans

from toolkit.core.onnx_network import INPUT_NAME, OPSET, OUTPUT_NAME
from toolkit.inference.runtimes import NetworkIO, onnxruntime_forward, openvino_forward
from toolkit.nets.onnx_export import network_spec, onnx_bytes
from toolkit.nets.unet import build_network

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

TOLERANCE = 1e-3


def resenc(plans):
    configuration = plans.configuration("3d_fullres")
    architecture = dataclasses.replace(
        configuration.architecture,
        network="residual_encoder",
        n_conv_per_stage=[],
        n_blocks_per_stage=[1, 2, 2],
    )
    configuration = dataclasses.replace(configuration, architecture=architecture)
    return dataclasses.replace(plans, configurations={"3d_fullres": configuration})


def regions(plans):
    return dataclasses.replace(
        plans,
        labels={"background": 0, "organ": [1, 2], "lesion": [2]},
        regions_class_order=[1, 2],
    )


CASES = {
    "plain": (make_plans(), "3d_fullres"),
    "resenc": (resenc(make_plans()), "3d_fullres"),
    "regions": (regions(make_plans()), "3d_fullres"),
    "cascade-lowres": (make_plans(cascade=True), "3d_lowres"),
    "cascade-fullres": (make_plans(cascade=True), "3d_cascade_fullres"),
    "2d": (make_plans(spatial_dims=2, patch=(32, 32)), "2d"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_onnx_logits_equal_torch_logits(case, tmp_path):
    plans, name = CASES[case]
    configuration = plans.configuration(name)
    torch.manual_seed(0)
    network = build_network(plans, configuration, deep_supervision=True).eval()
    with torch.no_grad():  # non-trivial norm statistics: random affine parameters
        for module in network.modules():
            if isinstance(module, torch.nn.InstanceNorm3d | torch.nn.InstanceNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    spec = network_spec(plans, configuration, None)
    data = onnx_bytes(network, spec)
    model = onnx.load_from_string(data)
    onnx.checker.check_model(model, full_check=True)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [OPSET]
    assert [i.name for i in model.graph.input] == [INPUT_NAME]
    assert [o.name for o in model.graph.output] == [OUTPUT_NAME]
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == spec.input_shape
    out_dims = [
        d.dim_param or d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim
    ]
    assert out_dims == spec.output_shape  # one output: no deep-supervision heads
    assert spec.num_classes == plans.num_classes
    if case == "cascade-fullres":
        assert spec.input_channels == plans.num_input_channels + 2  # one-hot organ, lesion
    path = tmp_path / "network.onnx"
    path.write_bytes(data)
    names = NetworkIO(INPUT_NAME, OUTPUT_NAME)
    runtimes = {
        "onnxruntime": onnxruntime_forward(path, names, threads=1),
        "openvino": openvino_forward(path, names, precision="fp32", threads=1),
    }
    rng = np.random.default_rng(1)
    for batch in (1, 3):
        x = rng.normal(size=(batch, *spec.input_shape[1:])).astype(np.float32)
        with torch.no_grad():
            expected = network(torch.from_numpy(x))[0].numpy()  # full resolution
        for runtime, forward in runtimes.items():
            got = forward(x)
            assert got.shape == expected.shape, runtime
            assert np.abs(got - expected).max() < TOLERANCE, (runtime, batch)


def test_the_graph_loads_in_a_plain_inference_session(tmp_path):
    """What a Triton ONNX Runtime backend does: a session, the documented names, a batch."""
    import onnxruntime

    plans, name = CASES["plain"]
    configuration = plans.configuration(name)
    network = build_network(plans, configuration, deep_supervision=False).eval()
    data = onnx_bytes(network, network_spec(plans, configuration, (0, 1, 2)))
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.shape) == ("image", ["batch", 1, 16, 32, 32])
    assert (out.name, out.shape) == ("logits", ["batch", 3, 16, 32, 32])
    (logits,) = session.run(["logits"], {"image": np.zeros((2, 1, 16, 32, 32), np.float32)})
    assert logits.shape == (2, 3, 16, 32, 32) and logits.dtype == np.float32
