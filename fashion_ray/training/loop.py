"""The per-worker training loop (Ray Train TorchTrainer, DDP) and publishing a bundle.

Practice from torchvision's references: SGD with momentum, linear warm-up then cosine or
step decay, gradient clipping, AMP on CUDA only, SyncBatchNorm across GPUs, a frozen
backbone where asked (requires_grad=False: no gradients, no optimizer state). Every
`checkpoint_every` steps rank 0 saves model, optimizer, scheduler, scaler and step to the
run's storage; a restarted run (worker failure, or the same command again) resumes from the
last checkpoint and replays nothing: the sample order and augmentation are functions of
(seed, epoch, sample) and the models' own randomness is reseeded from (seed, step, rank), so
it ends at the same step with the same weights. The held-out score (after PreciseBN) is
reported at every checkpoint and at epoch ends (at least MIN_STEPS_BETWEEN_REPORTS apart), with
the untrained network's score beside it.
"""

from __future__ import annotations

import concurrent.futures
import functools
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass

import numpy as np

from fashion_ray import taxonomy
from fashion_ray.boxes import xywh
from fashion_ray.errors import RunError
from fashion_ray.evaluation import CocoTable, ParseEvaluator, PartsEvaluator
from fashion_ray.models import garments
from fashion_ray.models.actions import WINDOW_MLP
from fashion_ray.models.efficientnet_lite import IMAGENET_INIT
from fashion_ray.models.torchvision_models import GARMENT_DETECTOR, PART_SEGMENTER, PERSON_DETECTOR
from fashion_ray.taxonomy import ACTIONS_STAGE, CLOTHING_STAGE, GARMENTS_TASK, PARTS_STAGE, PERSON_STAGE
from fashion_ray.training import data

# what each task trains; "garments" trains the clothing stage's garment parser (models/garments.py)
TRAINING_TASKS = (*taxonomy.STAGES, GARMENTS_TASK)
STAGE_OF_TASK = {**{stage: stage for stage in taxonomy.STAGES}, GARMENTS_TASK: CLOTHING_STAGE}
DEFAULT_ARCHITECTURE = {
    PERSON_STAGE: PERSON_DETECTOR,
    CLOTHING_STAGE: GARMENT_DETECTOR,
    PARTS_STAGE: PART_SEGMENTER,
    GARMENTS_TASK: garments.EFFICIENTNET_PARSER,
    ACTIONS_STAGE: WINDOW_MLP,
}
DEFAULT_INPUT_SIZE = {
    PERSON_STAGE: 320,
    CLOTHING_STAGE: 192,
    PARTS_STAGE: 128,
    GARMENTS_TASK: 384,
    ACTIONS_STAGE: 0,  # no pixels
}
SEMANTIC_TASKS = (PARTS_STAGE, GARMENTS_TASK)  # a per-pixel map per sample, scored by IoU
OBJECT = taxonomy.PERSON_CATEGORY_ID  # held-out boxes are scored class-agnostic, all under one category id
COCO_STATS = (
    "ap",
    "ap50",
    "ap75",
    "ap_small",
    "ap_medium",
    "ap_large",
    "ar1",
    "ar10",
    "ar100",
    "ar_small",
    "ar_medium",
    "ar_large",
)
GARMENT_PARSER = garments.BLAZEPOSE_PARSER  # 1.1: a head on BlazePose's frozen trunk, 256 px square views
GARMENT_PARSER_V2 = garments.EFFICIENTNET_PARSER  # 2.0: EfficientNet-Lite0, end to end, portrait views + presence
PARSERS = (GARMENT_PARSER, GARMENT_PARSER_V2)
ACTION_HEAD = WINDOW_MLP


@dataclass(frozen=True)
class TrainConfig:
    task: str
    data: str  # canonical COCO file URI
    architecture: str = ""
    input_size: int = 0
    steps: int = 200
    batch_size: int = 4  # per worker
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_steps: int = 20
    schedule: str = "cosine"  # cosine | step
    clip_grad: float = 10.0
    amp: bool = True  # on CUDA only
    freeze_backbone: bool = False
    pretrained_backbone: str | None = None  # a state dict URI for the backbone
    val_fraction: float = 0.2  # where the data marks no split of its own
    val_samples: int = 64  # held-out samples scored at each evaluation
    checkpoint_every: int = 50
    seed: int = 0

    def __post_init__(self):
        if self.task not in TRAINING_TASKS:
            raise ValueError(f"task {self.task!r} is not one of: {', '.join(TRAINING_TASKS)}")
        if self.schedule not in ("cosine", "step"):
            raise ValueError(f"schedule {self.schedule!r} is not one of: cosine, step")
        object.__setattr__(self, "architecture", self.architecture or DEFAULT_ARCHITECTURE[self.task])
        default_size = (
            256 if self.architecture == GARMENT_PARSER else DEFAULT_INPUT_SIZE[self.task]
        )  # 256: BlazePose's input
        object.__setattr__(self, "input_size", self.input_size or default_size)
        if self.architecture in PARSERS and self.task != GARMENTS_TASK:
            raise ValueError(f"architecture {self.architecture} is trained with --task garments")
        if (self.architecture == ACTION_HEAD) != (self.task == ACTIONS_STAGE):
            raise ValueError(f"--task actions trains architecture {ACTION_HEAD}, and only that task does")


def garment_view(cfg: TrainConfig) -> tuple[int, int] | None:
    """(height, width) of a garment parser's input: square for 1.1's, portrait for v2's."""
    return garments.parser_view(cfg.architecture, cfg.input_size) if cfg.task == GARMENTS_TASK else None


def lr_factor(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return 0.001 + (1 - 0.001) * step / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    if cfg.schedule == "step":
        return 0.1 ** int(progress >= 2 / 3) * 0.1 ** int(progress >= 8 / 9)
    return 0.5 * (1 + math.cos(math.pi * progress))


def build(cfg: TrainConfig, classes, presence_prior=None):
    """The network to train; parser v2's presence head starts at `presence_prior` (data.presence_prior)."""
    import torch

    if cfg.architecture == GARMENT_PARSER:
        return garments.build_head(len(classes))  # the trunk is frozen and outside the model (garment_trunk)
    if cfg.architecture == ACTION_HEAD:
        from fashion_ray.models.actions import build_head

        return build_head(len(classes))
    if cfg.architecture == GARMENT_PARSER_V2:
        from fashion_ray.models.efficientnet_lite import build_parser

        model = build_parser(len(classes))
        if presence_prior is not None:
            with torch.no_grad():
                model.presence[-1].bias.copy_(torch.logit(torch.as_tensor(presence_prior, dtype=torch.float32)))
    else:
        from fashion_ray.models.torchvision_models import build_model

        # segmentation classes of garments include the background, the others do not
        num_classes = len(classes) + (cfg.task != GARMENTS_TASK)
        model = build_model(cfg.architecture, num_classes=num_classes, input_size=cfg.input_size)
    if cfg.pretrained_backbone == IMAGENET_INIT:
        from fashion_ray.models.efficientnet_lite import imagenet_encoder_state

        state = imagenet_encoder_state()
    elif cfg.pretrained_backbone:
        from fashion_ray import storage

        fs, path = storage.filesystem(cfg.pretrained_backbone)
        with fs.open(path, "rb") as fh:
            state = torch.load(fh, map_location="cpu", weights_only=True)
    if cfg.pretrained_backbone:
        missing = model.backbone.load_state_dict(state, strict=False)
        print(f"pretrained backbone: {len(state) - len(missing.unexpected_keys)} tensors loaded")
    if cfg.freeze_backbone:
        for p in model.backbone.parameters():
            p.requires_grad_(False)
    return model


@functools.lru_cache(maxsize=2)
def garment_trunk(device_type: str, threads: int):
    """The garment parser's frozen BlazePose trunk, from the bootstrap bundle (sha256-checked)."""
    from fashion_ray.models.bundle import load_bundle, read_checked

    bundle = load_bundle("bootstrap")
    pose = bundle.stages[PERSON_STAGE].model_options["files"]["pose"]
    return garments.BlazePoseTrunk(
        read_checked(bundle, pose["path"], pose["sha256"]), device=device_type, threads=threads
    )


def _to_tensors(batch, cfg: TrainConfig, device):
    import torch

    task = cfg.task
    if task == ACTIONS_STAGE:
        return (
            torch.from_numpy(np.stack([f for f, _ in batch])).to(device),
            torch.from_numpy(np.stack([t["labels"] for _, t in batch])).to(device),
        )
    if task == GARMENTS_TASK and cfg.architecture == GARMENT_PARSER:
        views = np.stack([view for view, _ in batch])
        return garments.head_inputs(garment_trunk(device.type, torch.get_num_threads()), views, device), torch.stack(
            [torch.from_numpy(t["parse"]).long().to(device) for _, t in batch]
        )
    if cfg.architecture == GARMENT_PARSER_V2:
        from fashion_ray.models.efficientnet_lite import normalise

        parse = torch.stack([torch.from_numpy(t["parse"]).long() for _, t in batch]).to(device)
        presence = torch.stack([torch.from_numpy(t["presence"]) for _, t in batch]).to(device)
        views = torch.from_numpy(normalise(np.stack([view for view, _ in batch])))
        return views.to(device), {"parse": parse, "presence": presence}
    images = [torch.from_numpy(img).permute(2, 0, 1).float().div(255).to(device) for img, _ in batch]
    if task in SEMANTIC_TASKS:
        from fashion_ray.models.torchvision_models import IMAGENET_MEAN, IMAGENET_STD

        key = "parts" if task == PARTS_STAGE else "parse"
        mean = torch.tensor(IMAGENET_MEAN, device=device).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=device).view(3, 1, 1)
        return torch.stack([(im - mean) / std for im in images]), torch.stack(
            [torch.from_numpy(t[key]).long().to(device) for _, t in batch]
        )
    targets = [{k: torch.from_numpy(v).to(device) for k, v in t.items()} for _, t in batch]
    return images, targets


def _logits(model, inputs, size):
    """Per-pixel class logits at `size` for either segmenter family."""
    import torch.nn.functional as F

    out = model(inputs)
    out = out["out"] if isinstance(out, dict) else out
    return (
        out
        if tuple(out.shape[-2:]) == tuple(size)
        else F.interpolate(out, size=size, mode="bilinear", align_corners=False)
    )


PARTS_CLASS_WEIGHTS = (0.2,) + (1.0,) * len(taxonomy.PARTS)  # background covers ~3/4 of a crop
# background and skin cover most of a view; small garment classes (belt, glasses, tie) count
# as much as trousers in the mIoU, so they weigh more in the loss
GARMENT_CLASS_WEIGHTS = tuple(
    0.3 if name == "background" else 3.0 if name in ("belt", "glasses", "tie", "hat", "scarf") else 1.0
    for name in taxonomy.GARMENT_PARSE
)


PRESENCE_LOSS_WEIGHT = 0.4  # the presence head's BCE beside the per-pixel cross-entropy (parser v2)


def loss_of(model, batch, cfg: TrainConfig, device):
    import torch
    import torch.nn.functional as F

    inputs, targets = _to_tensors(batch, cfg, device)
    if cfg.task == ACTIONS_STAGE:  # multi-label, as AVA is: one sigmoid per action
        return F.binary_cross_entropy_with_logits(model(inputs).float(), targets)
    if cfg.task == PARTS_STAGE:
        return F.cross_entropy(
            _logits(model, inputs, targets.shape[-2:]), targets, weight=torch.tensor(PARTS_CLASS_WEIGHTS, device=device)
        )
    if cfg.task == GARMENTS_TASK and isinstance(targets, dict):  # parser v2: pixels and presence
        out = model(inputs)
        weight = torch.tensor(GARMENT_CLASS_WEIGHTS, device=device)
        parse = targets["parse"]
        # a batch of tagged photos alone has no pixel to score: its pixel loss is 0, not NaN
        pixels = F.cross_entropy(
            out["out"].float(), parse, weight=weight, ignore_index=taxonomy.PARSE_IGNORE, reduction="sum"
        ) / (weight[parse.clamp(max=len(weight) - 1)] * (parse != taxonomy.PARSE_IGNORE)).sum().clamp(min=1.0)
        known = targets["presence"] >= 0  # background, and nothing else, is never scored
        presence = F.binary_cross_entropy_with_logits(out["presence"].float()[known], targets["presence"][known])
        return pixels + PRESENCE_LOSS_WEIGHT * presence
    if cfg.task == GARMENTS_TASK:
        return F.cross_entropy(
            _logits(model, inputs, targets.shape[-2:]).float(),
            targets,
            weight=torch.tensor(GARMENT_CLASS_WEIGHTS, device=device),
            ignore_index=taxonomy.PARSE_IGNORE,
        )
    return sum(model(inputs, targets).values())


def precise_batch_norm(model, batches, cfg: TrainConfig, device) -> None:
    """Recompute BatchNorm running statistics as a plain average over `batches` (PreciseBN).

    MobileNetV3's BatchNorm keeps running statistics with momentum 0.01: after a few hundred
    steps they still describe the random initial network, and eval-mode output is garbage
    even when training went well. Training itself never reads them (it uses batch statistics).
    """
    import torch

    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    was_training = model.training
    model.train()
    with torch.no_grad():
        for batch in batches:
            inputs, targets = _to_tensors(batch, cfg, device)
            model(inputs) if cfg.task in SEMANTIC_TASKS else model(inputs, targets)
    for m, momentum in zip(norms, saved):
        m.momentum = momentum
    model.train(was_training)


def evaluate_maps(model, batches, cfg: TrainConfig, device) -> dict:
    """Per-class IoU of the held-out samples' maps (parts: PartsEvaluator, garments: ParseEvaluator)."""
    import torch

    ev = PartsEvaluator() if cfg.task == PARTS_STAGE else ParseEvaluator()
    model.eval()
    with torch.inference_mode():
        for batch in batches:
            inputs, targets = _to_tensors(batch, cfg, device)
            targets = targets["parse"] if isinstance(targets, dict) else targets  # parser v2: presence too
            pred = _logits(model, inputs, targets.shape[-2:]).argmax(1)
            for gt, dt in zip(targets.cpu().numpy(), pred.cpu().numpy()):
                ev.add_maps(gt.astype(np.uint8), dt.astype(np.uint8))
    model.train()
    return ev.evaluate()


def evaluate_boxes(model, batches, cfg: TrainConfig, device) -> dict:
    """Box AP (COCO, all classes as one) of the held-out samples, scored by evaluation.CocoTable."""
    import torch

    images, gt, dt = [], [], []
    # box AP reads no masks: a Mask R-CNN's mask head on up to 100 boxes an image (an untrained
    # network keeps them all) was nine tenths of scoring on a CPU, so it is switched off meanwhile
    heads = getattr(getattr(model, "module", model), "roi_heads", None)
    mask_pool = getattr(heads, "mask_roi_pool", None)
    if mask_pool is not None:
        heads.mask_roi_pool = None
    try:
        model.eval()
        with torch.inference_mode():
            for batch in batches:
                tensors, targets = _to_tensors(batch, cfg, device)
                for image, out, target in zip(tensors, model(tensors), targets):
                    image_id = len(images) + 1
                    images.append({"id": image_id, "height": image.shape[1], "width": image.shape[2]})
                    gt += [
                        {
                            "id": len(gt) + 1,
                            "image_id": image_id,
                            "category_id": OBJECT,
                            "bbox": xywh(box),
                            "iscrowd": 0,
                        }
                        for box in target["boxes"].tolist()
                    ]
                    dt += [
                        {"image_id": image_id, "category_id": OBJECT, "bbox": xywh(box), "score": float(score)}
                        for box, score in zip(out["boxes"].tolist(), out["scores"].tolist())
                    ]
    finally:
        model.train()
        if mask_pool is not None:
            heads.mask_roi_pool = mask_pool
    table = CocoTable("bbox", [OBJECT])
    table.process(images, gt, dt)
    stats = table.evaluate()["stats"]
    return {f"box_{name}": 0.0 if v is None else v for name, v in zip(COCO_STATS, stats)}


def evaluate_action_head(model, batches, cfg: TrainConfig, device) -> dict:
    """Mean average precision of the held-out examples, over the classes they have (per example:
    one keyframe person, so AP per class ranks examples by the class's score)."""
    import torch

    from fashion_ray.evaluation import average_precision

    scores, labels = [], []
    model.eval()
    with torch.inference_mode():
        for batch in batches:
            inputs, targets = _to_tensors(batch, cfg, device)
            scores.append(torch.sigmoid(model(inputs).float()).cpu().numpy())
            labels.append(targets.cpu().numpy())
    model.train()
    scores, labels = np.concatenate(scores), np.concatenate(labels) > 0.5
    ap = [average_precision(scores[:, c], labels[:, c], int(labels[:, c].sum())) for c in range(labels.shape[1])]
    ap = [v for v in ap if not math.isnan(v)]
    return {"map": float(np.mean(ap)) if ap else 0.0}


VAL_METRIC = {"parts": "miou_parts", "garments": "miou_garments", "actions": "map"}  # the others: box_ap


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


def score_held_out(model, cfg: TrainConfig, calibration, val_batches, device) -> dict:
    """PreciseBN on training batches, then the held-out score: val_metric and its details."""
    precise_batch_norm(model, calibration, cfg, device)
    evaluate = (
        evaluate_action_head
        if cfg.task == ACTIONS_STAGE
        else evaluate_maps
        if cfg.task in SEMANTIC_TASKS
        else evaluate_boxes
    )
    scores = evaluate(model, val_batches, cfg, device)
    return {
        "val_metric": scores[VAL_METRIC.get(cfg.task, "box_ap")] or 0.0,
        **{f"val_{k}": v for k, v in scores.items() if isinstance(v, float)},
        **{f"val_iou_{k}": v for k, v in (scores.get("iou") or {}).items() if isinstance(v, float)},
    }


@dataclass
class TrainState:
    """One worker's training state: what a checkpoint saves and a restart restores."""

    model: object
    params: list
    optimizer: object
    scheduler: object
    scaler: object
    step: int = 0
    initial: float | None = None  # the untrained network's held-out score


def setup(cfg: TrainConfig, classes, device, world: int, presence_prior=None) -> TrainState:
    """Model (DDP-wrapped), optimizer, schedule and AMP scaler, as torchvision's references set them."""
    import ray.train.torch
    import torch

    model = build(cfg, classes, presence_prior)
    if device.type == "cuda" and world > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # batch statistics over all GPUs
    # no buffer broadcast before every forward (a collective per step): BatchNorm running
    # statistics are never read in training, and PreciseBN recomputes them before scoring
    model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"broadcast_buffers": False})
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp and device.type == "cuda")
    return TrainState(model, params, optimizer, scheduler, scaler)


def restore(run: TrainState, device) -> None:
    """Continue from the run's last checkpoint after a restart or a rerun, if it has one."""
    import ray.train
    import torch

    checkpoint = ray.train.get_checkpoint()
    if not checkpoint:
        return
    with checkpoint.as_directory() as folder:
        state = torch.load(os.path.join(folder, "state.pt"), map_location=device, weights_only=True)
    _unwrap(run.model).load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.scaler.load_state_dict(state["scaler"])
    run.step, run.initial = int(state["step"]), state.get("initial_metric")


class NonFiniteLoss(RunError):
    """A training loss that is NaN or infinite; the step it came from is not taken."""


def train_one_step(run: TrainState, batch, cfg: TrainConfig, device, rank: int) -> float:
    import torch

    # the models' own randomness (RPN/ROI sampling) from (seed, step, rank): a resumed run draws the same
    torch.manual_seed(cfg.seed * 1_000_003 + run.step * 1009 + rank)
    amp = run.scaler.is_enabled()
    with torch.autocast(device.type, enabled=amp):
        loss = loss_of(run.model, batch, cfg, device)
    if not amp and not torch.isfinite(loss.detach()):
        # one step would carry it into every weight (AMP's scaler skips such steps itself); the
        # worker fails, Ray Train restarts it from the last checkpoint, and a loss that stays
        # non-finite ends the run with this message
        raise NonFiniteLoss(
            f"the {cfg.task} loss is {float(loss)} at step {run.step} (learning rate "
            f"{run.scheduler.get_last_lr()[0]:g}); the step was not taken: lower --lr or check the data"
        )
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.unscale_(run.optimizer)
    torch.nn.utils.clip_grad_norm_(run.params, cfg.clip_grad)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    run.step += 1
    return float(loss.detach())


def report(run: TrainState, cfg: TrainConfig, classes, metrics: dict, *, save: bool, rank: int) -> None:
    """Report metrics to Ray Train, with a checkpoint from rank 0 when `save` (every rank must call)."""
    import ray.train
    import torch

    with tempfile.TemporaryDirectory() as folder:
        ckpt = None
        if rank == 0 and save:
            torch.save(
                {
                    "model": _unwrap(run.model).state_dict(),
                    "optimizer": run.optimizer.state_dict(),
                    "scheduler": run.scheduler.state_dict(),
                    "scaler": run.scaler.state_dict(),
                    "step": run.step,
                    "initial_metric": run.initial,
                    "classes": list(classes),
                    "config": asdict(cfg),
                },
                os.path.join(folder, "state.pt"),
            )
            ckpt = ray.train.Checkpoint.from_directory(folder)
        ray.train.report(metrics, checkpoint=ckpt)


# a report costs a sync of all workers, a held-out score and Ray Train's bookkeeping (~1.7 s on
# 2 CPUs): on a small set (600 action examples: epochs of 7 steps) reporting every epoch end
# took 40 % of the run
MIN_STEPS_BETWEEN_REPORTS = 100


@dataclass
class WorkerBatches:
    """One worker's data: its batch for any step (a pure function of seed, epoch and step, so a
    resumed run sees exactly what an unbroken one does) and the held-out batches."""

    cfg: TrainConfig
    index: object  # data.CocoIndex
    classes: tuple
    train_set: list
    rank: int
    world: int

    def __post_init__(self):
        self.per_step = self.cfg.batch_size * self.world
        self.steps_per_epoch = max(1, len(self.train_set) // self.per_step)
        self.view = garment_view(self.cfg)

    def _load(self, samples: list, *, train: bool, epoch: int):
        cfg = self.cfg
        return data.load_batch(
            self.index,
            cfg.task,
            samples,
            train=train,
            epoch=epoch,
            input_size=cfg.input_size,
            seed=cfg.seed,
            classes=self.classes,
            view=self.view,
        )

    def for_step(self, at: int):
        epoch, within = divmod(at, self.steps_per_epoch)
        order = data.epoch_order(len(self.train_set), self.cfg.seed, epoch)
        start = within * self.per_step + self.rank * self.cfg.batch_size
        return self._load(
            [self.train_set[i] for i in order[start : start + self.cfg.batch_size]], train=True, epoch=epoch
        )

    def held_out(self, samples: list, count: int) -> list:
        size = self.cfg.batch_size
        return [
            self._load(samples[i : i + size], train=False, epoch=0) for i in range(0, min(len(samples), count), size)
        ]


class StepWindow:
    """Losses and timings of the steps between two reports; throughput excludes scoring."""

    def __init__(self, samples_per_step: int):
        self.samples_per_step = samples_per_step
        self.restart()

    def restart(self) -> None:
        self.losses, self.seconds, self.loading = [], [], []
        self.started = time.perf_counter()

    def add(self, loss: float, load_wait_s: float, step_s: float) -> None:
        self.losses.append(loss)
        self.loading.append(load_wait_s)
        self.seconds.append(step_s)

    def metrics(self) -> dict:
        return {
            "loss": float(np.mean(self.losses)),
            "seconds_per_step": float(np.median(self.seconds)),
            "load_wait_seconds_per_step": float(np.median(self.loading)),
            "samples_per_s": len(self.seconds) * self.samples_per_step / (time.perf_counter() - self.started),
        }


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point: one DDP worker."""
    import ray.train
    import ray.train.torch
    import torch

    cfg = TrainConfig(**config["train"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.seed)  # the same initial weights on every worker (DDP also broadcasts them)
    torch.set_num_threads(config.get("torch_threads", 1))
    index = data.load_index(cfg.data)
    classes = index.classes(cfg.task)
    train_set, val_set = data.split(index.samples(cfg.task), cfg.val_fraction, index.images)
    batches = WorkerBatches(cfg, index, classes, train_set, rank, world)
    prior = data.presence_prior(index, train_set) if cfg.architecture == GARMENT_PARSER_V2 else None
    run = setup(cfg, classes, device, world, prior)
    restore(run, device)
    resumed_from_step = run.step

    val_batches, calibration = [], []
    if rank == 0:
        val_batches = batches.held_out(val_set, cfg.val_samples)
        calibration = batches.held_out(train_set, cfg.batch_size * 8)
        if run.step == 0:  # the untrained network's score: what training is measured against
            run.initial = score_held_out(_unwrap(run.model), cfg, calibration, val_batches, device)["val_metric"]

    run.model.train()
    window = StepWindow(batches.per_step)
    last_report = run.step
    # the next batch is fetched and decoded in a thread while this step computes (a GPU step
    # would otherwise wait for the CPU's decode every step)
    prefetch = concurrent.futures.ThreadPoolExecutor(1)
    upcoming = prefetch.submit(batches.for_step, run.step)
    while run.step < cfg.steps:
        epoch = run.step // batches.steps_per_epoch
        t_load = time.perf_counter()
        batch = upcoming.result()
        if run.step + 1 < cfg.steps:
            upcoming = prefetch.submit(batches.for_step, run.step + 1)
        t0 = time.perf_counter()
        loss = train_one_step(run, batch, cfg, device, rank)
        window.add(loss, t0 - t_load, time.perf_counter() - t0)
        save = run.step % cfg.checkpoint_every == 0 or run.step == cfg.steps
        epoch_end = run.step % batches.steps_per_epoch == 0 and run.step - last_report >= MIN_STEPS_BETWEEN_REPORTS
        if not (save or epoch_end):
            continue
        last_report = run.step
        # report at checkpoints and epoch ends only: each report is a sync point of all workers
        lr = run.scheduler.get_last_lr()[0]
        metrics = {"step": run.step, "epoch": epoch, "lr": lr, "resumed_from_step": resumed_from_step}
        metrics |= window.metrics()
        if rank == 0:
            metrics |= score_held_out(_unwrap(run.model), cfg, calibration, val_batches, device)
            if run.initial is not None:
                metrics["val_initial"] = run.initial
        report(run, cfg, classes, metrics, save=save, rank=rank)
        window.restart()
    prefetch.shutdown()
