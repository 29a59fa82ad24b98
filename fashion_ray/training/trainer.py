"""Launch training on Ray Train and publish the best checkpoint as a model bundle.

The same call runs 2 CPU workers on a laptop (gloo) and 64 GPU workers across nodes (NCCL):
only the ScalingConfig changes. Checkpoints and the run state live under
storage_path/name (any fsspec URI, s3:// included); the same command run again resumes from
the last checkpoint, and a failed worker restarts the group from it (FailureConfig).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict

from fashion_ray import storage
from fashion_ray.models.bundle import StageModel, bundle_files, load_bundle, read_checked, save_bundle
from fashion_ray.training import data
from fashion_ray.training.loop import (
    ACTION_HEAD,
    GARMENT_PARSER,
    PARSERS,
    STAGE_OF_TASK,
    TrainConfig,
    train_loop_per_worker,
)


def check_data(cfg: TrainConfig, workers: int) -> None:
    """On the driver, before any worker starts: the data loads and has enough samples."""
    index = data.load_index(cfg.data)
    train_set, val_set = data.split(index.samples(cfg.task), cfg.val_fraction, index.images)
    if len(train_set) < cfg.batch_size * workers or not val_set:
        raise ValueError(
            f"{cfg.data} has {len(train_set)} training and {len(val_set)} held-out {cfg.task} samples; "
            f"a step needs {cfg.batch_size * workers} (batch size x workers) and scoring at least one held out"
        )


def fit(
    cfg: TrainConfig,
    *,
    workers: int,
    gpus_per_worker: float = 0.0,
    cpus_per_worker: float = 1.0,
    storage_path: str,
    name: str,
    max_failures: int = 3,
    torch_threads: int = 1,
):
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    use_gpu = gpus_per_worker > 0
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"train": asdict(cfg), "torch_threads": torch_threads},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": cpus_per_worker, **({"GPU": gpus_per_worker} if use_gpu else {})},
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage_path,
            # the most recent ones (resume needs the last); publish() picks the best of them by val_metric
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=5),
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
        ),
    )
    return trainer.fit()


def _checkpoint_state(checkpoint) -> dict:
    import torch

    with checkpoint.as_directory() as folder:
        return torch.load(os.path.join(folder, "state.pt"), map_location="cpu", weights_only=True)


def publish(
    result,
    output: str,
    *,
    bundle_name: str,
    version: str,
    base_bundle: str | None = None,
    score_threshold: float | None = None,
) -> dict:
    """Write the best checkpoint as a bundle at `output`; returns the training record.

    The labelling job always needs a person stage: a clothing or parts model is published
    with the base bundle's other stages (their files copied after their sha256 check).
    """
    candidates = result.best_checkpoints or [(result.checkpoint, result.metrics)]
    checkpoint, metrics = max(candidates, key=lambda cm: cm[1].get("val_metric") or 0.0)
    state = _checkpoint_state(checkpoint)
    cfg = TrainConfig(**state["config"])
    stage_name = STAGE_OF_TASK[cfg.task]
    options = {}
    if cfg.architecture == GARMENT_PARSER:  # the frozen trunk is the bootstrap pose model: the same file
        options = {"files": {"trunk": load_bundle("bootstrap").stages["person"].model_options["files"]["pose"]}}
        if not base_bundle:
            raise ValueError("a garment parser is published with a base bundle (its trunk is the base's pose model)")
    if score_threshold is None:  # a parser's score is a garment's mean pixel confidence, a detector's its box score
        score_threshold = 0.3 if cfg.architecture in (*PARSERS, ACTION_HEAD) else 0.5
    spec = StageModel(
        cfg.architecture, tuple(state["classes"]), cfg.input_size, score_threshold, 0.5, model_options=options
    )
    stages = {stage_name: (spec, state["model"])}
    if base_bundle:
        base = load_bundle(base_bundle)
        for stage, base_spec in base.stages.items():
            if stage != stage_name:
                stages[stage] = (base_spec, None)
                for relative, sha256 in bundle_files(base_spec):
                    storage.write_bytes_atomic(storage.join(output, relative), read_checked(base, relative, sha256))
    for entry in options.get("files", {}).values():  # the trunk, unless the base already brought it
        fs, path = storage.filesystem(storage.join(output, entry["path"]))
        if not fs.exists(path):
            storage.write_bytes_atomic(
                storage.join(output, entry["path"]),
                read_checked(load_bundle("bootstrap"), entry["path"], entry["sha256"]),
            )
    record = {
        "task": cfg.task,
        "data": cfg.data,
        "architecture": cfg.architecture,
        "input_size": cfg.input_size,
        "pretrained_backbone": cfg.pretrained_backbone,
        "best_step": int(state["step"]),
        "final_step": int(result.metrics["step"]),
        "base_bundle": base_bundle,
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
        "final_metrics": {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))},
    }
    storage.write_bytes_atomic(storage.join(output, "training.json"), json.dumps(record, indent=2).encode())
    save_bundle(output, bundle_name, version, stages)  # bundle.json last
    return record
