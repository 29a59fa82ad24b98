"""Served cascade throughput and latency against the same cascade called in-process, in one run.

- baseline: one process, the batch job's stage objects, decode + person -> clothing -> parts
  photo by photo (what a server with no Serve, no batching and no hops would do);
- served: the Serve app on this Ray, N concurrent clients posting the photos over HTTP;
  requests/s, latency percentiles, and per step (decode, each stage) the mean batch a request
  rode in and that batch's time, from the Server-Timing header of each answer;
- ratio = served requests/s / baseline photos/s;
- label_studio: N concurrent Label Studio /predict requests (tasks with data: URI photos, as
  Label Studio sends them) with /health polled meanwhile: tasks/s, and the health check's
  latency (Label Studio gives it 1 s before it shows the model Disconnected).
"""

from __future__ import annotations

import base64
import concurrent.futures
import os
import threading
import time

import numpy as np
import requests

from fashion_ray.config import SAMPLE_CORPUS, ServeConfig
from fashion_ray.serving.cascade import Request, decode, run_stage, uploaded
from fashion_ray.stages import STAGE_CLASSES


def sample_photos() -> list[bytes]:
    names = sorted(n for n in os.listdir(SAMPLE_CORPUS) if n.endswith(".jpg"))
    return [open(os.path.join(SAMPLE_CORPUS, n), "rb").read() for n in names]


def _percentiles(seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1000
    return {f"p{q}_ms": round(float(np.percentile(ms, q)), 1) for q in (50, 90, 99)}


def baseline(cfg: ServeConfig, photos: list[bytes], count: int) -> dict:
    t0 = time.perf_counter()
    # each stage on its served device (the GPU under --device cuda): the same cascade, in one process
    stages = [
        STAGE_CLASSES[s](bundle_uri=cfg.bundle, device=res.runs_on, batch_size=res.batch_size)
        for s, res in ((s, cfg.resources[s]) for s in cfg.stages)
    ]
    load_s = time.perf_counter() - t0
    latencies = []
    start = time.perf_counter()
    for i in range(count):
        t = time.perf_counter()
        request: Request = uploaded(photos[i % len(photos)])
        decode(request, photos[i % len(photos)], cfg)
        for stage in stages:
            run_stage(stage, [request])
        latencies.append(time.perf_counter() - t)
    seconds = time.perf_counter() - start
    return {"load_s": round(load_s, 2), "photos_per_s": round(count / seconds, 3), **_percentiles(latencies)}


def server_timing(header: str) -> dict[str, tuple[int, float]]:
    """{step: (batch size, ms)} from the ingress's Server-Timing header."""
    out = {}
    for entry in filter(None, (e.strip() for e in header.split(","))):
        step, *params = entry.split(";")
        values = dict(p.split("=", 1) for p in params)
        out[step] = (int(values["desc"].strip('"').rsplit(" ", 1)[1]), float(values["dur"]))
    return out


def load(url: str, photos: list[bytes], clients: int, count: int) -> dict:
    """`count` requests from `clients` concurrent clients; every answer must be 200."""

    def one(i: int) -> tuple[float, dict]:
        t = time.perf_counter()
        answer = requests.post(
            f"{url}/v1/label", data=photos[i % len(photos)], headers={"Content-Type": "image/jpeg"}, timeout=300
        )
        assert answer.status_code == 200, answer.text[:300]
        return time.perf_counter() - t, server_timing(answer.headers["Server-Timing"])

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        answers = list(pool.map(one, range(count)))
    seconds = time.perf_counter() - start
    steps = answers[0][1]
    return {
        "clients": clients,
        "requests": count,
        "requests_per_s": round(count / seconds, 3),
        **_percentiles([latency for latency, _ in answers]),
        # per step: mean batch a request rode in, mean ms of that batch
        "mean_batch": {s: round(float(np.mean([t[s][0] for _, t in answers])), 2) for s in steps},
        "mean_step_ms": {s: round(float(np.mean([t[s][1] for _, t in answers])), 1) for s in steps},
    }


def label_studio_load(
    url: str, photos: list[bytes], clients: int, requests_per_client: int, tasks_per_request: int
) -> dict:
    """Concurrent /predict requests of data: URI tasks, with /health polled every 0.2 s meanwhile."""
    config = requests.get(f"{url}/label-studio/config.xml", timeout=60).text
    uris = ["data:image/jpeg;base64," + base64.b64encode(p).decode() for p in photos]
    health, stop = [], threading.Event()

    def poll():
        while not stop.is_set():
            t = time.perf_counter()
            assert requests.get(f"{url}/label-studio/health", timeout=30).status_code == 200
            health.append(time.perf_counter() - t)
            stop.wait(0.2)

    def one(i: int) -> int:
        tasks = [
            {"id": i * tasks_per_request + k, "data": {"image": uris[(i + k) % len(uris)]}}
            for k in range(tasks_per_request)
        ]
        answer = requests.post(
            f"{url}/label-studio/predict", json={"tasks": tasks, "label_config": config}, timeout=300
        )
        assert answer.status_code == 200, answer.text[:300]
        return sum(1 for r in answer.json()["results"] if r)

    poller = threading.Thread(target=poll)
    poller.start()
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        predicted = sum(pool.map(one, range(clients * requests_per_client)))
    seconds = time.perf_counter() - start
    stop.set()
    poller.join()
    ms = np.asarray(health) * 1000
    return {
        "clients": clients,
        "tasks": clients * requests_per_client * tasks_per_request,
        "predicted": predicted,
        "tasks_per_s": round(predicted / seconds, 3),
        "health_checks": len(health),
        "health_p50_ms": round(float(np.percentile(ms, 50)), 1),
        "health_max_ms": round(float(ms.max()), 1),
    }


def serve_benchmark(cfg: ServeConfig, clients: list[int], requests_per_client: int, port: int) -> dict:
    from ray import serve

    from fashion_ray.serving.app import application

    photos = sample_photos()
    result = {
        "photos": len(photos),
        "bundle": cfg.bundle,
        "stages": list(cfg.stages),
        # each photo twice (once with a quick check's single request per client, as the LS load)
        "baseline_in_process": baseline(cfg, photos, min(2, requests_per_client) * len(photos)),
    }
    t0 = time.perf_counter()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(application(cfg), name="fashion-ray", route_prefix="/")
    result["serve_start_s"] = round(time.perf_counter() - t0, 2)
    url = f"http://127.0.0.1:{port}"
    try:
        load(url, photos, 1, len(photos))  # warm-up: first calls pay lazy initialisation
        result["served"] = [load(url, photos, n, n * requests_per_client) for n in clients]
        result["label_studio"] = label_studio_load(url, photos, max(clients), min(2, requests_per_client), 4)
    finally:
        serve.shutdown()
    base = result["baseline_in_process"]["photos_per_s"]
    result["ratio_vs_baseline"] = {str(r["clients"]): round(r["requests_per_s"] / base, 3) for r in result["served"]}
    return result


def palette_png(side: int) -> bytes:
    """A side x side palette PNG with a transparent colour, one colour throughout: ~60 KB at
    8000x8000 that decodes to 64 megapixels (the security review's request)."""
    import io

    from PIL import Image

    img = Image.new("P", (side, side), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    buf = io.BytesIO()
    img.save(buf, "PNG", transparency=0, optimize=True)
    return buf.getvalue()


def decode_memory_benchmark(cfg: ServeConfig, side: int, concurrent_requests: int, port: int) -> dict:
    """The ingress replica's memory while it serves palette PNGs of side x side: its RSS idle,
    then its peak over one request and over `concurrent_requests` at once (sampled every 50 ms)."""
    import psutil
    from ray import serve

    from fashion_ray.samplers import PeakRSS
    from fashion_ray.serving.app import application

    png = palette_png(side)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(application(cfg), name="fashion-ray", route_prefix="/")
    url = f"http://127.0.0.1:{port}/v1/label"
    try:
        # the replica's process is this driver's descendant, titled "ray::ServeReplica:fashion-ray:Ingress..."
        [pid] = [p.pid for p in psutil.Process().children(recursive=True) if "Ingress" in " ".join(p.cmdline()[:1])]

        def post(_) -> int:
            return requests.post(url, data=png, headers={"Content-Type": "image/png"}, timeout=600).status_code

        post(0)  # warm-up: the stages' first call pays their lazy initialisation
        idle = psutil.Process(pid).memory_info().rss
        result = {
            "png_bytes": len(png),
            "pixels": side * side,
            "decode_memory_mb": cfg.decode_memory_mb,
            "ingress_idle_gb": round(idle / 2**30, 3),
        }
        for clients in (1, concurrent_requests):
            with PeakRSS(pid, interval=0.05) as peak, concurrent.futures.ThreadPoolExecutor(clients) as pool:
                statuses = list(pool.map(post, range(clients)))
            result[f"{clients}_at_once"] = {
                "statuses": statuses,
                "ingress_peak_gb": round(peak.peak / 2**30, 3),
                "over_idle_gb": round((peak.peak - idle) / 2**30, 3),
            }
    finally:
        serve.shutdown()
    return result
