"""Samplers that watch a block of work from a thread: peak memory and CPU time of a process tree,
and GPU utilisation and memory from nvidia-smi. No dependency beyond numpy and psutil, so the GPU
check can use them on a bare machine before anything else is installed."""

from __future__ import annotations

import subprocess
import threading
import time

import numpy as np


class _Sampler:
    """Calls sample() every `interval` seconds in a thread while its `with` block runs;
    sample() returning False stops it."""

    interval = 0.2

    def sample(self) -> bool | None:
        raise NotImplementedError

    def __enter__(self):
        self._stop = threading.Event()

        def loop():
            while not self._stop.is_set() and self.sample() is not False:
                time.sleep(self.interval)

        self.thread = threading.Thread(target=loop, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join()


class PeakRSS(_Sampler):
    """The peaks of the summed memory of a process (this one by default) and all its
    descendants (Ray workers included): `peak`, of their RSS, counts a page every process
    maps (torch's libraries, the object store's shared memory) once per process, so it grows
    with how many processes are alive; `peak_pss`, of their PSS (each shared page split
    among its users), is the memory the machine gives them."""

    def __init__(self, pid: int | None = None, interval: float = _Sampler.interval):
        import psutil

        self.proc, self.peak, self.peak_pss, self.interval = psutil.Process(pid), 0, 0, interval

    def sample(self) -> None:
        rss = pss = 0
        for p in [self.proc, *self.proc.children(recursive=True)]:
            try:
                memory = p.memory_full_info()
                rss, pss = rss + memory.rss, pss + memory.pss
            except Exception:  # a worker exiting between listing and reading
                pass
        self.peak, self.peak_pss = max(self.peak, rss), max(self.peak_pss, pss)


class TreeCPU(_Sampler):
    """The CPU seconds a process (this one by default) and all its descendants have used, from
    each process's own times, sampled every `interval` s and at each seconds(). A parent's figure
    for its ended children is no help: Ray's raylet does not collect its workers' times. A process
    that lives less than an interval between two readings is missed."""

    def __init__(self, pid: int | None = None, interval: float = 1.0):
        import psutil

        self.proc, self.interval = psutil.Process(pid), interval
        self._last_seen: dict[tuple[int, float], float] = {}  # (pid, start time) -> own CPU seconds
        self._lock = threading.Lock()  # the sampling thread and the caller's readings

    def sample(self) -> None:
        self.seconds()

    def seconds(self) -> float:
        with self._lock:
            for p in [self.proc, *self.proc.children(recursive=True)]:
                try:
                    t = p.cpu_times()
                    self._last_seen[p.pid, p.create_time()] = t.user + t.system
                except Exception:  # ended while being read: its last sample stands
                    pass
            return sum(self._last_seen.values())


class GpuUtilisation(_Sampler):
    """GPU utilisation and memory from nvidia-smi; no samples where there is none."""

    interval = 0.5

    def __init__(self):
        self.samples: list[tuple[float, float]] = []

    def sample(self) -> bool:
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout
            self.samples += [tuple(float(v) for v in line.split(",")) for line in out.strip().splitlines()]
        except (OSError, ValueError, subprocess.SubprocessError):  # no nvidia-smi, or no GPU behind it
            return False
        return True

    def summary(self) -> dict | None:
        if not self.samples:
            return None
        busy = [u for u, _ in self.samples]
        return {
            "mean_utilisation_pct": round(float(np.mean(busy)), 1),
            "max_utilisation_pct": max(busy),
            "max_memory_mib": max(m for _, m in self.samples),
            "samples": len(self.samples),
        }
