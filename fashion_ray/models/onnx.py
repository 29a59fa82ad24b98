"""onnxruntime sessions for the converted models, on the stage's device.

CPU by default; with device "cuda" the CUDA provider (the `onnxruntime-gpu` wheel of
cluster/runtime_env.yaml), failing loudly when that wheel or the GPU is missing instead of
running a GPU pool on the CPU unnoticed.
"""

from __future__ import annotations

import numpy as np


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
