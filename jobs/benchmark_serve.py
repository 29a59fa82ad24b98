"""Benchmark the served cascade: requests/s and latency for 1 and 8 clients, against the
same cascade called in-process, in one run.

    python jobs/benchmark_serve.py                       # bootstrap bundle, sample photos, 1 and 8 clients
    python jobs/benchmark_serve.py --clients 1,4,16 --requests-per-client 8 --bundle s3://bucket/models/v1/
    python jobs/benchmark_serve.py --decode-bomb 8000 --bomb-requests 3   # the ingress's memory instead

Prints one JSON object (fashion_ray/bench/serving.py says what each figure is).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from fashion_ray.bench.serving import decode_memory_benchmark, serve_benchmark
from fashion_ray.config import DEVICES, ConfigError
from fashion_ray.ray_init import init_ray
from fashion_ray.serving.app import serve_config
from fashion_ray.taxonomy import STAGES


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", default="1,8", help="concurrent client counts, comma-separated")
    p.add_argument("--requests-per-client", type=int, default=6)
    p.add_argument("--bundle", default="bootstrap")
    p.add_argument("--device", default="cpu", choices=DEVICES)
    p.add_argument("--stages", default=",".join(STAGES), help="the served cascade's stages")
    p.add_argument("--set", default="", help="stage resource overrides, e.g. all.batch_size=8,person.max_actors=2")
    p.add_argument("--batch-wait-ms", type=float, default=10.0, help="how long a stage waits to fill a batch")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--num-cpus", type=int, default=None)
    p.add_argument(
        "--decode-bomb",
        type=int,
        default=0,
        metavar="SIDE",
        help="instead: the ingress's peak memory serving SIDE x SIDE palette PNGs (one, then --bomb-requests at once)",
    )
    p.add_argument("--bomb-requests", type=int, default=3)
    return p


def main(args) -> int:
    try:
        cfg = serve_config(
            {
                "bundle": args.bundle,
                "stages": args.stages,
                "device": args.device,
                "set": args.set,
                "batch_wait_ms": args.batch_wait_ms,
            }
        )
    except ConfigError as exc:  # a bad --stages or --set: one line, no traceback
        raise SystemExit(f"error: {exc}") from None
    init_ray(None, args.num_cpus)
    if args.decode_bomb:
        print(json.dumps(decode_memory_benchmark(cfg, args.decode_bomb, args.bomb_requests, args.port), indent=2))
        return 0
    clients = [int(c) for c in args.clients.split(",")]
    print(json.dumps(serve_benchmark(cfg, clients, args.requests_per_client, args.port), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
