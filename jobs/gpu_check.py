"""Exercise and measure every CUDA path in one call: fashion_ray/bench/gpu_check.py says what each step does.

On a lent GPU machine (about 9 minutes of steps; give the call 10):
    python jobs/gpu_check.py --output out/gpu-check
    python jobs/gpu_check.py --install --wheels .whl --output out/gpu-check   # onnxruntime-gpu from a wheel folder

The same steps on a CPU machine in a few minutes (what the tests run):
    python jobs/gpu_check.py --device cpu --quick --output out/gpu-check-cpu

Writes OUTPUT/gpu_check.json (every step's figures, failures with their output, GPU
utilisation and memory per step, a summary) and OUTPUT/logs/STEP.log; exit 0 when every
step ran, 1 when one failed, 2 for bad flags.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # runs before any install

from fashion_ray.bench import gpu_check


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--quick", action="store_true", help="small workloads: the steps in a few minutes on a CPU")
    p.add_argument("--output", default="out/gpu-check", help="folder for gpu_check.json and the steps' logs")
    p.add_argument("--install", action="store_true", help="first install onnxruntime-gpu (in place of onnxruntime)")
    p.add_argument("--wheels", default=None, metavar="DIR", help="with --install: install from this wheel folder only")
    p.add_argument("--steps", default="", help=f"run only these steps (comma-separated: {', '.join(gpu_check.STEPS)})")
    p.add_argument(
        "--probe",
        action="store_true",
        help="the environment step alone: print its JSON (exit 1: a CUDA path is missing)",
    )
    return p


def main(args) -> int:
    if args.probe:
        figures, problems = gpu_check.probe(args.device)
        print(json.dumps({**figures, "problems": problems}, indent=2))
        return 1 if problems else 0
    only = tuple(s.strip() for s in args.steps.split(",") if s.strip())
    unknown = sorted(set(only) - set(gpu_check.STEPS))
    if unknown:
        print(f"error: unknown steps {unknown} (valid: {', '.join(gpu_check.STEPS)})", file=sys.stderr)
        return 2
    if args.wheels and not os.path.isdir(args.wheels):
        print(f"error: --wheels {args.wheels!r} is not a folder", file=sys.stderr)
        return 2
    report = gpu_check.run_check(
        args.device, args.quick, args.output, install=args.install, wheels=args.wheels, only=only
    )
    print(json.dumps(report["summary"], indent=2))
    failed = [name for name, step in report["steps"].items() if not step["ok"]]
    print(
        f"{len(report['steps']) - len(failed)} of {len(report['steps'])} steps ran"
        + (f"; failed: {', '.join(failed)}" if failed else "")
        + f" (details: {os.path.join(args.output, 'gpu_check.json')})",
        file=sys.stderr,
    )
    return 0 if report["all_ran"] else 1


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
