"""Model bundles and the predictors built from them.

Four families of architectures share one predictor interface (predictors.py):
torchvision detectors/segmenters with bundle weights, the bootstrap models (bootstrap.py)
built from pretrained files that registry packages ship, the garment parser
(garments.py): a trained head on the pose model's frozen features, and the actions stage's
rules or trained window head (actions.py), which label tracks rather than images.
"""

from __future__ import annotations

from fashion_ray.config import Device
from fashion_ray.models import actions, bootstrap, garments, torchvision_models
from fashion_ray.models.bundle import Bundle, BundleError, load_bundle, verify_bundle
from fashion_ray.models.predictors import Predictor


def _registry(*families) -> dict:
    """Architecture name -> the builder of its predictor, from (names, builder) per family."""
    registry: dict = {}
    for names, build in families:
        for name in names:
            if name in registry:
                raise ValueError(f"architecture {name!r} is defined twice")
            registry[name] = build
    return registry


# every builder is build(bundle, spec, *, device, storage_options) -> Predictor
PREDICTOR_BUILDERS = _registry(
    (torchvision_models.ARCHITECTURES, torchvision_models.build_predictor),
    (bootstrap.ARCHITECTURES, bootstrap.build_predictor),
    (garments.ARCHITECTURES, garments.build_predictor),
    (actions.ARCHITECTURES, actions.build_predictor),
)
ARCHITECTURES = tuple(sorted(PREDICTOR_BUILDERS))


def validate_bundle(bundle: Bundle) -> None:
    for stage, spec in bundle.stages.items():
        if spec.architecture not in ARCHITECTURES:
            raise BundleError(
                f"bundle {bundle.label}, stage {stage!r}: unknown architecture {spec.architecture!r} "
                f"(valid: {', '.join(ARCHITECTURES)})"
            )
        bootstrap.check_options(bundle, spec)


def build_stage_predictor(bundle: Bundle, stage: str, device: Device, storage_options=None) -> Predictor:
    """Load one stage's model from its bundle (weights checked and loaded weights_only)."""
    spec = bundle.stages[stage]
    return PREDICTOR_BUILDERS[spec.architecture](bundle, spec, device=device, storage_options=storage_options)


def written_labels(spec) -> tuple[str, ...]:
    """The categories a stage's rows hold: its classes, or for the garment parser (whose
    classes are per-pixel parse classes) the garment names it derives from them."""
    return garments.WRITTEN if spec.architecture in garments.ARCHITECTURES else spec.classes


__all__ = [
    "ARCHITECTURES",
    "Bundle",
    "BundleError",
    "Predictor",
    "build_stage_predictor",
    "load_bundle",
    "validate_bundle",
    "verify_bundle",
    "written_labels",
]
