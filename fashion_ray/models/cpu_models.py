"""The model files the bootstrap bundle can run on CPUs, made from its own (once, offline, by
`python jobs/make_cpu_models.py`; the same bytes every run; their sha256s go into bundle.json,
files.parser_onnx and files.detector_int8):

- `garments_v2.onnx`: the garment parser v2 (`garments_v2.pt`) exported to ONNX, weights
  stored as fp16 as in the .pt (a Cast to fp32 in the graph): the same outputs as torch (1e-5),
  the clothing stage 1.33x cheaper on one CPU thread. The clothing stage runs it on CPUs.
  Its INT8 version was measured and not kept: 1.4x faster again, but 0.012-0.017 less garment
  mIoU on CCP (skirts 0.18 -> 0.07).
- `nanodet_g_416_int8.onnx` (opt-in: the person option `"cpu_int8": true`): NanoDet quantised by
  onnxruntime's static quantisation (QOperator: QLinearConv, uint8 activations and per-channel
  uint8 weights, the pairing its x86 kernels run without saturating on CPUs without VNNI),
  calibrated by min-max on the photos this package ships (the sample corpus and the
  person-eval assets, each whole and as its four quarters, letterboxed to 416). The first
  convolution (the normalised pixels) and the three head convolutions (class logits and box
  distributions) stay fp32: quantising them cost 0.04-0.05 person AP on COCO128. As made, it
  is 1.3x cheaper and costs 0.003-0.005 person AP on photos, but small people score 0.06
  lower (20-40 px walkers in street video: 103 -> 22 found), hence off by default.

Figures: docs/evaluation.md, "An ONNX garment parser, and an INT8 NanoDet measured". GPUs
run the fp32 NanoDet (onnxruntime's CUDA provider has no QLinearConv) and the torch parser (AMP).
"""

from __future__ import annotations

import glob
import hashlib
import os
import tempfile

import numpy as np

ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets")
NANODET, NANODET_INT8 = "nanodet_g_416.onnx", "nanodet_g_416_int8.onnx"
PARSER_ONNX = "garments_v2.onnx"


def kept_in_fp32(model) -> list[str]:
    """The first convolution and every convolution that feeds an output with no other one
    between: the pixels in and the logits out."""
    producer = {out: node for node in model.graph.node for out in node.output}
    first = next(node.name for node in model.graph.node if node.op_type == "Conv")
    heads, stack = set(), [out.name for out in model.graph.output]
    while stack:
        node = producer.get(stack.pop())
        if node is None:
            continue
        if node.op_type == "Conv":
            heads.add(node.name)
        else:
            stack.extend(node.input)
    return [first, *sorted(heads)]


def _photos() -> list[np.ndarray]:
    from PIL import Image

    paths = sorted(glob.glob(os.path.join(ASSETS, "sample_corpus", "*.jpg")))
    paths += sorted(glob.glob(os.path.join(ASSETS, "person_eval", "*")))
    return [np.asarray(Image.open(path).convert("RGB")) for path in paths]


def nanodet_inputs() -> list[np.ndarray]:
    """Each photo whole and as its four quarters (people at the zoom view's scale), letterboxed."""
    from fashion_ray.models import nanodet

    inputs = []
    for image in _photos():
        h, w = image.shape[:2]
        inputs.append(nanodet.letterbox(image, nanodet.INPUT_SIDE)[0])
        for y in (0, h // 2):
            for x in (0, w // 2):
                inputs.append(nanodet.letterbox(image[y : y + h // 2, x : x + w // 2], nanodet.INPUT_SIDE)[0])
    return inputs


def export_parser(bundle_dir: str, path: str) -> str:
    """The bundle's garment parser as an ONNX graph at `path` (normalised views -> pixel
    logits, presence logits)."""
    import torch

    from fashion_ray.models import load_bundle
    from fashion_ray.models.efficientnet_lite import build_parser
    from fashion_ray.models.garments import parser_view

    spec = load_bundle(bundle_dir).stages["clothing"]
    parser = build_parser(len(spec.classes))
    weights = os.path.join(bundle_dir, spec.weights)
    parser.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))

    class Outputs(torch.nn.Module):  # the exporter wants a tuple, not the parser's dict
        def __init__(self):
            super().__init__()
            self.parser = parser.float().eval()

        def forward(self, views):
            out = self.parser(views)
            return out["out"], out["presence"]

    view_hw = parser_view(spec.architecture, spec.input_size)
    torch.onnx.export(
        Outputs().eval(),
        (torch.zeros(1, 3, *view_hw),),
        path,
        dynamo=False,  # the TorchScript exporter: the dynamo one needs onnxscript
        do_constant_folding=False,  # batch norms stay as they are (fp16 values), fused when loaded
        input_names=["views"],
        output_names=["out", "presence"],
        dynamic_axes={"views": {0: "batch"}, "out": {0: "batch"}, "presence": {0: "batch"}},
        opset_version=17,
    )
    return path


def fp16_storage(path: str) -> bytes:
    """The graph with every fp32 weight that fp16 holds exactly stored as fp16 and cast back
    in the graph (onnxruntime folds the casts when it loads it): half the file, the same model."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(path)
    graph, casts = model.graph, []
    for k, weight in enumerate(graph.initializer):
        values = numpy_helper.to_array(weight)
        if values.dtype != np.float32 or not np.array_equal(values.astype(np.float16).astype(np.float32), values):
            continue
        name = weight.name
        graph.initializer[k].CopyFrom(numpy_helper.from_array(values.astype(np.float16), f"{name}_fp16"))
        casts.append(onnx.helper.make_node("Cast", [f"{name}_fp16"], [name], to=onnx.TensorProto.FLOAT))
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def quantize(source: str, target: str, inputs: list[np.ndarray], keep_fp32) -> str:
    """The ONNX file `source` quantised into `target` (QOperator, uint8 per-channel weights,
    min-max calibration on `inputs`); returns the target's sha256."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        prepared = os.path.join(tmp, "prepared.onnx")
        # folds constant subgraphs (NanoDet's fp16 -> fp32 weight casts) into initialisers the
        # quantiser can read
        quant_pre_process(source, prepared, skip_symbolic_shape=True)
        model = onnx.load(prepared)
        name = model.graph.input[0].name

        class Calibration(CalibrationDataReader):
            def __init__(self):
                self.feeds = iter({name: x} for x in inputs)

            def get_next(self):
                return next(self.feeds, None)

        quantize_static(
            prepared,
            target,
            Calibration(),
            quant_format=QuantFormat.QOperator,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QUInt8,
            nodes_to_exclude=keep_fp32(model),
        )
    with open(target, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def make_cpu_models(bundle_dir: str) -> dict[str, str]:
    """Write both files into the bootstrap bundle's folder; {file name: sha256}."""
    made = {
        NANODET_INT8: quantize(
            os.path.join(bundle_dir, NANODET), os.path.join(bundle_dir, NANODET_INT8), nanodet_inputs(), kept_in_fp32
        )
    }
    with tempfile.TemporaryDirectory() as tmp:
        graph = fp16_storage(export_parser(bundle_dir, os.path.join(tmp, "parser.onnx")))
    with open(os.path.join(bundle_dir, PARSER_ONNX), "wb") as fh:
        fh.write(graph)
    made[PARSER_ONNX] = hashlib.sha256(graph).hexdigest()
    return made
