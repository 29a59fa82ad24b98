"""Make the bootstrap bundle's CPU model files from its own: the garment parser as ONNX and an
INT8 NanoDet (fashion_ray/models/cpu_models.py says how and why). Run once, offline; the same
bytes every run; put the printed sha256s into the bundle's bundle.json.

python jobs/make_cpu_models.py            # writes into fashion_ray/assets/bundles/bootstrap/
"""

from __future__ import annotations

import argparse
import os
import sys

from fashion_ray.models.bundle import BUILTIN_BUNDLES_DIR
from fashion_ray.models.cpu_models import make_cpu_models


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Make the bootstrap bundle's CPU model files (ONNX parser, INT8 NanoDet).")
    p.add_argument(
        "--bundle-dir",
        default=os.path.join(BUILTIN_BUNDLES_DIR, "bootstrap"),
        help="the bootstrap bundle's folder, read and written (default: the built-in one)",
    )
    return p


def main(args) -> int:
    if not os.path.isfile(os.path.join(args.bundle_dir, "bundle.json")):
        print(f"error: no bundle.json in {args.bundle_dir!r}: give the bootstrap bundle's folder", file=sys.stderr)
        return 2
    for name, sha256 in make_cpu_models(args.bundle_dir).items():
        print(name, sha256)
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
