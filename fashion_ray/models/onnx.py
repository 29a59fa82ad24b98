"""onnxruntime sessions for the converted models, on the stage's device, and the few graph
edits made at load time.

CPU by default; with device "cuda" the CUDA provider (the `onnxruntime-gpu` wheel of
cluster/runtime_env.yaml), failing loudly when that wheel or the GPU is missing instead of
running a GPU pool on the CPU unnoticed.

Graph edits (NanoDet's free input size, BlazePose's trunk outputs) go through `model_proto`:
the few messages and fields of ONNX's schema they touch, every other field kept as protobuf
unknown fields and written back as read. The `onnx` package would do the same, but importing
it costs about a second (its ml_dtypes extension) in every actor and replica that starts.
"""

from __future__ import annotations

import functools

import numpy as np

FLOAT = 1  # onnx.TensorProto.FLOAT


@functools.cache
def _model_class():
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    field = descriptor_pb2.FieldDescriptorProto
    schema = descriptor_pb2.FileDescriptorProto(name="fashion_ray/onnx_subset.proto", package="onnx_subset")

    def message(name: str, *fields: tuple[str, int, int, str | None, bool]):
        m = schema.message_type.add(name=name)
        for field_name, number, kind, type_name, repeated in fields:
            f = m.field.add(name=field_name, number=number, type=kind)
            f.label = field.LABEL_REPEATED if repeated else field.LABEL_OPTIONAL
            if type_name:
                f.type_name = f".onnx_subset.{type_name}"
        return m

    # field numbers as in onnx/onnx.proto
    dimension = message(
        "Dimension", ("dim_value", 1, field.TYPE_INT64, None, False), ("dim_param", 2, field.TYPE_STRING, None, False)
    )
    dimension.oneof_decl.add(name="value")
    for f in dimension.field:
        f.oneof_index = 0
    message("Shape", ("dim", 1, field.TYPE_MESSAGE, "Dimension", True))
    message("Tensor", ("elem_type", 1, field.TYPE_INT32, None, False), ("shape", 2, field.TYPE_MESSAGE, "Shape", False))
    message("Type", ("tensor_type", 1, field.TYPE_MESSAGE, "Tensor", False))
    message("ValueInfo", ("name", 1, field.TYPE_STRING, None, False), ("type", 2, field.TYPE_MESSAGE, "Type", False))
    message(
        "Graph",
        ("input", 11, field.TYPE_MESSAGE, "ValueInfo", True),
        ("output", 12, field.TYPE_MESSAGE, "ValueInfo", True),
        ("value_info", 13, field.TYPE_MESSAGE, "ValueInfo", True),
    )
    message("Model", ("graph", 7, field.TYPE_MESSAGE, "Graph", False))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(schema)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("onnx_subset.Model"))


def model_proto(model: bytes):
    """A serialized ONNX model as a message with graph.input / output / value_info (names, element
    types, shapes) to edit; SerializeToString() gives the whole model back."""
    return _model_class().FromString(model)


def session(model: bytes, device: str = "cpu", threads: int = 1):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)  # Ray's CPU share for the actor, not every core
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # onnxruntime's shape warnings are not the user's business
    providers = ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeError(
                "device 'cuda' needs onnxruntime-gpu (its CUDA provider is missing: "
                f"available {ort.get_available_providers()})"
            )
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    sess = ort.InferenceSession(model, sess_options=options, providers=providers)
    # the CUDA provider is listed but drops out quietly when its CUDA or cuDNN libraries do not load
    if device == "cuda" and sess.get_providers()[0] != "CUDAExecutionProvider":
        raise RuntimeError(
            f"device 'cuda': onnxruntime's CUDA provider did not load (session runs on {sess.get_providers()}); "
            "check that the CUDA and cuDNN versions match the onnxruntime-gpu wheel"
        )
    return sess


def run(sess, batch: np.ndarray) -> dict[str, np.ndarray]:
    """Outputs by name for one input tensor."""
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {sess.get_inputs()[0].name: batch})))


def run_batched(sess, batch: np.ndarray, max_batch: int) -> dict[str, np.ndarray]:
    """Outputs by name for a batch run `max_batch` inputs a call (a bound on the session's memory)."""
    chunks = [run(sess, batch[i : i + max_batch]) for i in range(0, len(batch), max_batch)]
    return {name: np.concatenate([c[name] for c in chunks]) for name in chunks[0]}
