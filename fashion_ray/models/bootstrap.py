"""Bootstrap models (placeholder until the pose-based teacher lands)."""

ARCHITECTURES: dict = {}


def build_predictor(bundle, spec, device, options=None):
    raise NotImplementedError
