"""The Ray Serve application: an HTTP ingress and one deployment per model stage.

    serve run fashion_ray.serving.app:build                       # bootstrap bundle, CPU, :8000
    serve run fashion_ray.serving.app:build device=cuda bundle=s3://models/fashion/v3
    serve deploy cluster/serve.yaml                               # the same on a cluster

Why a deployment per stage: each stage gets the batch job's resources for that stage (a GPU
slice for a model, CPU for the bootstrap), scales on its own queue, and batches the
requests that reach it together (@serve.batch), as Ray Data batches rows for an actor pool.
The ingress decodes (the batch job's decode tasks), draws overlays and speaks HTTP.

Routes: GET / (the web page), GET /v1/info, POST /v1/label (image bytes, or JSON {"uri": ...}
under an allowed prefix; ?overlay=true adds a base64 PNG), and Label Studio's ML backend at
/label-studio (health, setup, predict, webhook; config.xml is a labelling config to start from).
"""


import asyncio
import html
import json
import logging
import os
import time
from importlib import resources

from fastapi import FastAPI
from fastapi import Request as HttpRequest
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve

from fashion_ray import preview, taxonomy
from fashion_ray.config import GPU_STAGE, ConfigError, ServeConfig, apply_overrides
from fashion_ray.models import Device, load_bundle, written_labels
from fashion_ray.placement import serve_deployment_options
from fashion_ray.serving import label_studio
from fashion_ray.serving.cascade import (HTTP_STATUS, Request, check_uri, decode, fetch, label_row, overlay_png, refused,
                                        row_json, run_stage, uploaded)
from fashion_ray.stages import STAGE_CLASSES

log = logging.getLogger(__name__)
MAX_JSON_BYTES = 64 * 1024  # a JSON request names a URI; it is never large


@serve.deployment
class StageDeployment:
    """One model stage; concurrent requests are run as one batch."""

    def __init__(self, stage: str, cfg: ServeConfig):
        res = cfg.resources[stage]
        self.stage = STAGE_CLASSES[stage](bundle_uri=cfg.bundle, batch_size=res.batch_size, storage_options=cfg.storage,
                                          device=Device(name=res.device, amp=res.amp, torch_threads=res.torch_threads))
        self.label.set_max_batch_size(res.batch_size)
        self.label.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)
        self.name = stage

    @serve.batch
    async def label(self, requests: list[Request]) -> list[Request]:
        # the model runs in a thread so that requests keep arriving (and batching) meanwhile
        start = time.perf_counter()
        await asyncio.to_thread(run_stage, self.stage, requests)
        for r in requests:
            r.served[self.name] = (len(requests), time.perf_counter() - start)
        return requests


api = FastAPI(title="fashion-ray", docs_url="/docs")


@api.exception_handler(label_studio.ProtocolError)
async def _label_studio_refusal(http: HttpRequest, exc: label_studio.ProtocolError) -> Response:
    return JSONResponse({"error": str(exc)}, status_code=400)


def _page(cfg: ServeConfig, bundle_label: str) -> str:
    legend = "".join(f'<span class="swatch" style="background:rgb{c}">{n}</span>' for n, c in preview.PART_COLOURS.items())
    page = resources.files("fashion_ray").joinpath("assets/web/index.html").read_text()
    return (page.replace("{{legend}}", legend).replace("{{bundle}}", html.escape(bundle_label))
            .replace("{{max_mb}}", f"{cfg.max_bytes / 2**20:g}"))


@serve.deployment
@serve.ingress(api)
class Ingress:
    def __init__(self, cfg: ServeConfig, *stages):
        self.cfg = cfg
        self.stages = stages  # DeploymentHandles, in cascade order
        bundle = load_bundle(cfg.bundle, cfg.storage)
        self.bundle_name, self.bundle_version = bundle.name, bundle.version
        self.model_version = bundle.label
        clothing = bundle.stages.get("clothing")
        self.garments = written_labels(clothing) if clothing and "clothing" in cfg.stages else ()
        self.page = _page(cfg, self.model_version)
        self.label_studio: dict[str, label_studio.Connection] = {}  # project id -> its Label Studio

    async def _cascade(self, request: Request, data: bytes | None) -> tuple[Request, dict, object]:
        """Fetch and decode, run every stage; returns (the request, its Parquet row, the
        original-size image or None)."""
        image = None
        start = time.perf_counter()
        if request.status == "ok" and data is None:
            data = await asyncio.to_thread(fetch, request, self.cfg)
        if request.status == "ok":
            image = await asyncio.to_thread(decode, request, data, self.cfg)
            request.served["decode"] = (1, time.perf_counter() - start)
        for stage in self.stages:
            if request.status != "ok":
                break
            request = await stage.label.remote(request)
        row = label_row(request, bundle_name=self.bundle_name, bundle_version=self.bundle_version, stages=list(self.cfg.stages))
        return request, row, image

    async def _read(self, http: HttpRequest) -> tuple[Request, bytes | None]:
        """The request's image: bytes in the body, or {"uri": ...} in JSON. Size is checked
        from Content-Length before the body is read, and again while it streams in."""
        length = http.headers.get("content-length", "")
        if length and not length.isdigit():
            return refused("bad_request", f"Content-Length {length!r} is not a number"), None
        if length and int(length) > self.cfg.max_bytes:
            return refused("too_large", f"{length} bytes exceeds the limit of {self.cfg.max_bytes}", int(length)), None
        if http.headers.get("content-type", "").startswith("application/json"):
            body = await http.body()
            try:
                uri = json.loads(body[:MAX_JSON_BYTES])["uri"]
                assert isinstance(uri, str) and uri
            except Exception:
                return refused("bad_request", 'a JSON request is {"uri": "<an object the server may read>"}; '
                               "or send image bytes", len(body)), None
            return await asyncio.to_thread(check_uri, uri, self.cfg), None
        data = bytearray()
        async for chunk in http.stream():
            data += chunk
            if len(data) > self.cfg.max_bytes:
                return refused("too_large", f"more than {self.cfg.max_bytes} bytes (the limit)", len(data)), None
        return uploaded(bytes(data)), bytes(data)

    @api.get("/", response_class=HTMLResponse)
    async def page(self) -> str:
        return self.page

    @api.get("/v1/info")
    async def info(self) -> dict:
        return {"bundle": {"name": self.bundle_name, "version": self.bundle_version}, "stages": list(self.cfg.stages),
                "max_bytes": self.cfg.max_bytes, "max_pixels": self.cfg.max_pixels, "work_max_side": self.cfg.work_max_side,
                "allow_uris": list(self.cfg.allow_uris), "part_colours": preview.PART_COLOURS,
                "garment_categories": list(self.garments), "error_status": HTTP_STATUS}

    @api.post("/v1/label")
    async def label(self, http: HttpRequest, overlay: bool = False) -> Response:
        request, data = await self._read(http)
        request, row, image = await self._cascade(request, data)
        body = row_json(row)
        # where the time went, as browsers' devtools read it: "person;dur=812.4;desc="batch of 2", ..."
        timing = {"Server-Timing": ", ".join(f'{step};dur={seconds * 1000:.1f};desc="batch of {size}"'
                                             for step, (size, seconds) in request.served.items())}
        if row["status"] != "ok":
            return JSONResponse(body, status_code=HTTP_STATUS.get(row["error"], 422), headers=timing)
        if overlay:
            body["overlay_png"] = await asyncio.to_thread(overlay_png, image, row)
        return JSONResponse(body, headers=timing)

    # --- Label Studio ML backend (Label Studio appends these to the backend URL) ---

    @api.get("/label-studio/health")
    async def ls_health(self) -> dict:
        return {"status": "UP", "model_class": "fashion-ray cascade", "model_version": self.model_version}

    @api.get("/label-studio/config.xml")
    async def ls_config(self) -> Response:
        """A labelling config that takes everything the cascade finds (paste it into a project)."""
        return Response(label_studio.recommended_config(self.garments), media_type="application/xml")

    @staticmethod
    async def _ls_request(http: HttpRequest, config_key: str) -> tuple[dict, label_studio.Targets, str]:
        """(JSON body, its labelling config's targets, project id); ProtocolError (-> 400) otherwise."""
        try:
            payload = await http.json()
            assert isinstance(payload, dict)
        except Exception:
            raise label_studio.ProtocolError("the body is not a JSON object") from None
        targets = label_studio.parse_label_config(payload.get(config_key) or "")
        return payload, targets, str(payload.get("project", "")).split(".")[0]

    @api.post("/label-studio/setup")
    async def ls_setup(self, http: HttpRequest) -> Response:
        payload, _, project = await self._ls_request(http, "schema")
        self.label_studio[project] = label_studio.Connection.from_setup(payload)
        return JSONResponse({"model_version": self.model_version})

    @api.post("/label-studio/predict")
    async def ls_predict(self, http: HttpRequest) -> Response:
        payload, targets, project = await self._ls_request(http, "label_config")
        connection = self.label_studio.get(project) or label_studio.Connection.from_setup({})
        tasks = payload.get("tasks") or []
        if isinstance(tasks, dict):  # one task, not in a list (the reference backend's tests send this)
            tasks = [tasks]
        if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
            raise label_studio.ProtocolError("'tasks' must be a list of task objects")
        rows = await asyncio.gather(*(self._label_task(task, targets, connection) for task in tasks))
        return JSONResponse({"results": [label_studio.prediction(row, targets, self.model_version) for row in rows]})

    async def _label_task(self, task: dict, targets, connection) -> dict:
        """A task's row; an image we may not or cannot read is an error row (no prediction)."""
        try:
            kind, where = label_studio.task_image_source(task, targets, connection, self.cfg.allow_uris)
            if kind == "uri":
                request, data = await asyncio.to_thread(check_uri, where, self.cfg), None
            else:
                data = await asyncio.to_thread(label_studio.read_task_image, kind, where, connection, self.cfg.max_bytes)
                request = uploaded(data)
        except Exception as exc:
            log.warning("Label Studio task %s: %s", task.get("id"), exc)
            request, data = refused("unreadable", str(exc)[:300], uri=f"label-studio:task:{task.get('id')}"), None
        return (await self._cascade(request, data))[1]

    @api.post("/label-studio/webhook")
    async def ls_webhook(self) -> dict:
        return {}  # Label Studio reports project events here; the cascade does not train on them


BUILD_ARGS = ("bundle", "stages", "device", "set", "max_bytes", "max_side", "allow_uris", "batch_wait_ms")


def serve_config(args: dict) -> ServeConfig:
    """A ServeConfig from `serve run ... key=value` arguments (or a serve config's `args`)."""
    unknown = sorted(set(args) - set(BUILD_ARGS))
    if unknown:
        raise ConfigError(f"unknown argument(s) {', '.join(unknown)} (valid: {', '.join(BUILD_ARGS)})")
    kwargs = {}
    if "bundle" in args:
        kwargs["bundle"] = str(args["bundle"])
    if "stages" in args:
        kwargs["stages"] = tuple(s.strip() for s in str(args["stages"]).split(",") if s.strip())
    device = str(args.get("device", "cpu"))
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"device {device!r} is not one of: cpu, cuda")
    base = ServeConfig()
    res = {s: GPU_STAGE for s in taxonomy.STAGES} if device == "cuda" else dict(base.resources)
    if args.get("set"):
        res = apply_overrides(res, [o.strip() for o in str(args["set"]).split(",") if o.strip()])
    kwargs["resources"] = res
    try:
        for key, name, kind in (("max_bytes", "max_bytes", int), ("max_side", "work_max_side", int)):
            if key in args:
                kwargs[name] = kind(args[key])
        if "batch_wait_ms" in args:
            kwargs["batch_wait_timeout_s"] = float(args["batch_wait_ms"]) / 1000
    except ValueError as exc:
        raise ConfigError(f"bad number: {exc}") from None
    if args.get("allow_uris"):
        kwargs["allow_uris"] = tuple(p.strip() for p in str(args["allow_uris"]).split(",") if p.strip())
    return ServeConfig(**kwargs)


def application(cfg: ServeConfig):
    stages = [StageDeployment.options(name=f"stage-{stage}", **serve_deployment_options(cfg, stage)).bind(stage, cfg)
              for stage in cfg.stages]
    return Ingress.options(ray_actor_options={"num_cpus": cfg.ingress_num_cpus}).bind(cfg, *stages)


def build(args: dict):
    """Application builder for `serve run fashion_ray.serving.app:build key=value ...`."""
    return application(serve_config(args))
