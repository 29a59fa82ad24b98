"""How a test run's time went, worker by worker: `python tests/timeline.py FILE` reads the lines
FASHION_RAY_TEST_TIMELINE=FILE had the run write (conftest.py) and prints, per xdist worker, when
it finished and each module's start, end and busy seconds, then the slowest tests."""

from __future__ import annotations

import argparse
import collections


def read(path: str) -> list[tuple[str, float, float, str]]:
    rows = []
    for line in open(path):
        worker, start, end, test = line.rstrip("\n").split("\t")
        rows.append((worker, float(start), float(end), test))
    return rows


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="How a test run's time went, worker by worker.")
    parser.add_argument("timeline", help="the file FASHION_RAY_TEST_TIMELINE named for the run")
    parser.add_argument("--slowest", type=int, default=15, help="how many of the slowest tests to list")
    return parser


def main(args) -> None:
    rows = read(args.timeline)
    t0 = min(start for _, start, _, _ in rows)
    by_worker = collections.defaultdict(list)
    for row in rows:
        by_worker[row[0]].append(row)
    for worker, own in sorted(by_worker.items()):
        busy = sum(end - start for _, start, end, _ in own)
        print(f"{worker}: {len(own)} tests, busy {busy:.0f} s, last end at {max(r[2] for r in own) - t0:.0f} s")
        modules: dict[str, list[float]] = {}
        for _, start, end, test in sorted(own, key=lambda r: r[1]):
            span = modules.setdefault(test.split("::")[0], [start, end, 0.0])
            span[1], span[2] = max(span[1], end), span[2] + end - start
        for module, (start, end, seconds) in modules.items():
            print(f"  {module:44s} {start - t0:6.0f} {end - t0:6.0f} {seconds:7.1f} s")
    print("slowest:")
    for _, start, end, test in sorted(rows, key=lambda r: r[1] - r[2])[: args.slowest]:
        print(f"  {end - start:7.1f} s  {test}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
