"""Benchmark input listing at scale: our paged S3 listing against fsspec's find(), in one run.

    python jobs/benchmark_listing.py --keys 100000                # an S3 server on loopback, filled for the run
    python jobs/benchmark_listing.py --uri s3://bucket/uploads/   # a real bucket

Prints one JSON object: objects listed, seconds, keys/s and peak Python memory of both, their
ratios, and the time to diff the listing against a ledger of the same objects (an hourly
incremental run that finds nothing new).
"""

from __future__ import annotations

import argparse
import json
import sys

from fashion_ray import storage
from fashion_ray.bench import benchmark


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--keys", type=int, default=100_000, help="objects to create in the loopback S3 server")
    p.add_argument("--uri", default=None, help="list this prefix instead (no server is started)")
    p.add_argument("--s3-endpoint-url", default=None)
    return p


def main(args) -> int:
    options = storage.StorageOptions(endpoint_url=args.s3_endpoint_url)
    print(json.dumps(benchmark.listing_benchmark(args.keys, args.uri, options), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
