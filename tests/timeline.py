"""How a test run's time went, worker by worker: `python tests/timeline.py FILE` reads the lines
FASHION_RAY_TEST_TIMELINE=FILE had the run write (conftest.py) and prints, per xdist worker, when
it finished and each module's start, end, busy seconds and the CPU seconds its process tree used
(the worker, and the Rays, servers and CLI runs it started), then the slowest and the costliest tests.
On a machine with fewer CPUs than busy workers the wall clock follows the CPU seconds."""

from __future__ import annotations

import argparse
import collections


def read(path: str) -> list[tuple[str, float, float, str, float]]:
    rows = []
    for line in open(path):
        worker, start, end, test, cpu = line.rstrip("\n").split("\t")
        rows.append((worker, float(start), float(end), test, float(cpu)))
    return rows


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="How a test run's time went, worker by worker.")
    parser.add_argument("timeline", help="the file FASHION_RAY_TEST_TIMELINE named for the run")
    parser.add_argument("--slowest", type=int, default=15, help="how many of the slowest tests to list")
    return parser


def main(args) -> None:
    rows = read(args.timeline)
    t0 = min(row[1] for row in rows)
    by_worker = collections.defaultdict(list)
    for row in rows:
        by_worker[row[0]].append(row)
    for worker, own in sorted(by_worker.items()):
        busy, cpu = sum(r[2] - r[1] for r in own), sum(r[4] for r in own)
        print(
            f"{worker}: {len(own)} tests, busy {busy:.0f} s, CPU {cpu:.0f} s, "
            f"last end at {max(r[2] for r in own) - t0:.0f} s"
        )
        modules: dict[str, list[float]] = {}
        for _, start, end, test, cpu in sorted(own, key=lambda r: r[1]):
            span = modules.setdefault(test.split("::")[0], [start, end, 0.0, 0.0])
            span[1], span[2], span[3] = max(span[1], end), span[2] + end - start, span[3] + cpu
        print(f"  {'module':44s} {'start':>6s} {'end':>6s} {'busy':>9s} {'CPU':>9s}")
        for module, (start, end, seconds, cpu) in modules.items():
            print(f"  {module:44s} {start - t0:6.0f} {end - t0:6.0f} {seconds:7.1f} s {cpu:7.1f} s")
    for title, key in (("slowest", lambda r: r[2] - r[1]), ("most CPU", lambda r: r[4])):
        print(f"{title}:")
        for _, start, end, test, cpu in sorted(rows, key=key, reverse=True)[: args.slowest]:
            print(f"  {end - start:7.1f} s {cpu:7.1f} s CPU  {test}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
