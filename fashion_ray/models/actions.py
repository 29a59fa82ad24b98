"""The actions stage's two models: the bootstrap rules and a trained window head.

    predict_tracks(tracks: list[actions.Track]) -> per track, per frame, {AVA id: score}

- pose_motion_rules: fashion_ray/actions.py's pose and motion rules; no weights. Its
  `classes` are the AVA names it may write (a subset of actions.RULE_ACTIONS).
- pose_window_mlp: an MLP over `actions.window_features` (the track's pose and scene
  motion from 2 s before a keyframe to 2 s after), one sigmoid per class in `classes`
  (AVA names), trained by `jobs/train.py --task actions`.

A photo is a track of one frame: the rules then say only what one frame decides, and the
head sees a window with its other slots empty.
"""

from __future__ import annotations

import numpy as np

from fashion_ray import actions
from fashion_ray.config import Device
from fashion_ray.models.bundle import Bundle, BundleError, StageModel, load_state_dict
from fashion_ray.taxonomy import AVA_ACTION_ID

RULES, WINDOW_MLP = "pose_motion_rules", "pose_window_mlp"
HIDDEN = 256


def _action_ids(spec: StageModel) -> list[int]:
    unknown = [c for c in spec.classes if c not in AVA_ACTION_ID]
    if unknown:
        raise BundleError(f"actions stage: {unknown} are not AVA 2.2 action names (taxonomy.AVA_ACTIONS)")
    return [AVA_ACTION_ID[c] for c in spec.classes]


def build_head(num_classes: int):
    import torch.nn as nn

    size = len(actions.WINDOW_OFFSETS_S) * actions.SLOT_FEATURES
    return nn.Sequential(
        nn.Linear(size, HIDDEN),
        nn.ReLU(),
        nn.Dropout(0.1),
        nn.Linear(HIDDEN, HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, num_classes),
    )


class RulePredictor:
    kind = "actions"

    def __init__(self, spec: StageModel):
        self.allowed = set(_action_ids(spec))

    def predict_tracks(self, tracks: list[actions.Track]) -> list[list[dict[int, float]]]:
        return [
            [{k: v for k, v in frame.items() if k in self.allowed} for frame in actions.track_actions(track)]
            for track in tracks
        ]


class WindowHeadPredictor:
    kind = "actions"

    def __init__(self, spec: StageModel, state_dict: dict, device: Device):
        import torch

        self.torch, self.device = torch, device.setup()
        self.ids = _action_ids(spec)
        self.model = build_head(len(self.ids))
        self.model.load_state_dict(state_dict)
        self.model.to(self.device).eval()

    def predict_tracks(self, tracks: list[actions.Track]) -> list[list[dict[int, float]]]:
        features = [actions.window_features(track, i) for track in tracks for i in range(len(track.times))]
        if not features:
            return [[] for _ in tracks]
        with self.torch.inference_mode():
            scores = (
                self.torch.sigmoid(self.model(self.torch.from_numpy(np.stack(features)).to(self.device))).cpu().numpy()
            )
        out, at = [], 0
        for track in tracks:
            out.append(
                [{k: round(float(v), 4) for k, v in zip(self.ids, row)} for row in scores[at : at + len(track.times)]]
            )
            at += len(track.times)
        return out


def build_predictor(bundle: Bundle, spec: StageModel, *, device: Device, storage_options=None):
    if spec.architecture == RULES:
        return RulePredictor(spec)
    if not spec.weights:
        raise BundleError(f"bundle {bundle.label}: the {WINDOW_MLP} actions head needs weights")
    return WindowHeadPredictor(spec, load_state_dict(bundle, spec, storage_options), device)


ARCHITECTURES = (RULES, WINDOW_MLP)
