"""The Ray Serve application: an HTTP ingress and one deployment per model stage.

    serve run fashion_ray.serving.app:build                       # bootstrap bundle, CPU, :8000
    serve run fashion_ray.serving.app:build device=cuda bundle=s3://models/fashion/v3
    serve deploy cluster/serve.yaml                               # the same on a cluster

Why a deployment per stage: each stage gets the batch job's resources for that stage (a GPU
slice for a model, CPU for the bootstrap), scales on its own queue, and batches the
requests that reach it together (@serve.batch), as Ray Data batches rows for an actor pool.
The ingress decodes (the batch job's decode tasks), draws overlays and speaks HTTP.

Routes: GET / (the web page), POST /v1/label (image bytes, or JSON {"uri": ...} under an
allowed prefix; ?overlay=true adds a base64 PNG), Label Studio's ML backend at /label-studio
(health, setup, predict, webhook, metrics; config.xml is a labelling config to start from),
and with expose_info=true GET /v1/info, /docs and /openapi.json. Every route but the page
needs the API token when one is configured (auth.py); without one, loopback clients only.
"""

import asyncio
import concurrent.futures
import functools
import html
import json
import logging
import time
from importlib import resources

from fastapi import FastAPI, HTTPException
from fastapi import Request as HttpRequest
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve

from fashion_ray import preview
from fashion_ray.config import ConfigError, ServeConfig, apply_overrides, parse_stages, stage_resources
from fashion_ray.errors import FashionRayError
from fashion_ray.models import load_bundle, written_labels
from fashion_ray.placement import serve_deployment_options
from fashion_ray.serving import auth, label_studio
from fashion_ray.serving.cascade import (
    HTTP_STATUS,
    MemoryBudget,
    Request,
    check_uri,
    decode,
    decode_bytes,
    fetch,
    label_row,
    overlay_png,
    refused,
    row_json,
    run_stage,
    uploaded,
)
from fashion_ray.stages import STAGE_CLASSES
from fashion_ray.taxonomy import CLOTHING_STAGE

log = logging.getLogger(__name__)
MAX_JSON_BYTES = 64 * 1024  # a JSON request names a URI; it is never large
# Label Studio webhook events that mean "train": the reference backend answers them 201
TRAIN_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATION_DELETED", "START_TRAINING")


def _outcome(job: asyncio.Future) -> dict | list:
    """A finished task's answer; one that failed inside the cascade gets no prediction."""
    if job.exception() is not None:
        log.warning("Label Studio task failed: %s: %s", type(job.exception()).__name__, job.exception())
        return []
    return job.result()


@serve.deployment
class StageDeployment:
    """One model stage; concurrent requests are run as one batch."""

    def __init__(self, stage: str, cfg: ServeConfig):
        res = cfg.resources[stage]
        self.stage = STAGE_CLASSES[stage](
            bundle_uri=cfg.bundle, batch_size=res.batch_size, storage_options=cfg.storage, device=res.runs_on
        )
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


# FastAPI's own /docs and /openapi.json are off: with expose_info they are served by the Ingress
api = FastAPI(title="fashion-ray", docs_url=None, redoc_url=None, openapi_url=None)


class Unauthorized(FashionRayError):
    """A request without the API token (or, with none configured, from another host)."""


class BodyTooLarge(FashionRayError):
    """A request body over its route's limit, found while it streamed in."""


@api.exception_handler(Unauthorized)
async def _unauthorized(http: HttpRequest, exc: Unauthorized) -> Response:
    return JSONResponse(
        {"error": "unauthorized", "error_detail": str(exc)},
        status_code=401,
        headers={"WWW-Authenticate": 'Bearer, Basic realm="fashion-ray"'},
    )


@api.exception_handler(BodyTooLarge)
async def _too_large(http: HttpRequest, exc: BodyTooLarge) -> Response:
    return JSONResponse({"error": "too_large", "error_detail": str(exc)}, status_code=413)


@api.exception_handler(label_studio.ProtocolError)
async def _label_studio_refusal(http: HttpRequest, exc: label_studio.ProtocolError) -> Response:
    log.warning("Label Studio request refused (%s): %s", http.url.path, exc)  # Label Studio shows only the status
    return JSONResponse({"error": str(exc)}, status_code=exc.status)


async def read_body(http: HttpRequest, limit: int) -> bytes:
    """The whole body, refused (BodyTooLarge) from its Content-Length or once it streams past the
    limit: a chunked body has no length to check first."""
    length = http.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise BodyTooLarge(f"the body exceeds the limit of {limit} bytes")
    data = bytearray()
    async for chunk in http.stream():
        data += chunk
        if len(data) > limit:
            raise BodyTooLarge(f"the body exceeds the limit of {limit} bytes")
    return bytes(data)


def _page(cfg: ServeConfig, bundle_label: str) -> str:
    legend = "".join(
        f'<span class="swatch" style="background:rgb{c}">{n}</span>' for n, c in preview.PART_COLOURS.items()
    )
    page = resources.files("fashion_ray").joinpath("assets/web/index.html").read_text()
    return (
        page.replace("{{legend}}", legend)
        .replace("{{bundle}}", html.escape(bundle_label))
        .replace("{{max_mb}}", f"{cfg.max_bytes / 2**20:g}")
    )


def _serve_http_host() -> str:
    """The address Serve's HTTP proxies listen on (its controller's http_options)."""
    from ray.serve.context import _get_global_client

    return _get_global_client().http_config.host


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
        self.garments = written_labels(clothing) if clothing and CLOTHING_STAGE in cfg.stages else ()
        self.page = _page(cfg, self.model_version)
        self.token = auth.read_secret(cfg.auth_token_file, "auth_token_file") if cfg.auth_token_file else ""
        auth.check_listening_address(_serve_http_host(), self.token)
        self.label_studio = label_studio.Connection.from_config(cfg)  # never from a request
        self.ls_slots = asyncio.Semaphore(cfg.label_studio_concurrency)
        # task images are read in threads of their own: a task cancelled at the /predict deadline
        # leaves its read running (until label_studio_fetch_timeout_s), and the shared pool that
        # fetches and decodes /v1/label requests must not wait behind it
        self.ls_readers = concurrent.futures.ThreadPoolExecutor(
            cfg.label_studio_concurrency, thread_name_prefix="label-studio-read"
        )
        self.decode_memory = MemoryBudget(cfg.decode_memory_mb << 20)

    def _authorize(self, http: HttpRequest) -> None:
        reason = auth.refusal(self.token, http.headers, http.client.host if http.client else None)
        if reason:
            raise Unauthorized(reason)

    async def _cascade(
        self, request: Request, data: bytes | None, overlay: bool = False
    ) -> tuple[Request, dict, str | None]:
        """Fetch and decode, run every stage; returns (the request, its Parquet row, the overlay
        as base64 PNG when asked and labelled). The decode holds its share of decode_memory_mb,
        and with an overlay the full-size image holds it until the overlay is drawn."""
        if request.status == "ok" and data is None:
            data = await asyncio.to_thread(fetch, request, self.cfg)
        if request.status != "ok":
            return request, self._row(request), None
        async with self.decode_memory.hold(decode_bytes(data)):
            start = time.perf_counter()
            image = await asyncio.to_thread(decode, request, data, self.cfg, overlay)
            request.served["decode"] = (1, time.perf_counter() - start)
            if overlay:
                request, row = await self._stages(request)
                drawn = await asyncio.to_thread(overlay_png, image, row) if row["status"] == "ok" else None
                return request, row, drawn
        request, row = await self._stages(request)
        return request, row, None

    async def _stages(self, request: Request) -> tuple[Request, dict]:
        for stage in self.stages:
            if request.status != "ok":
                break
            request = await stage.label.remote(request)
        return request, self._row(request)

    def _row(self, request: Request) -> dict:
        return label_row(
            request, bundle_name=self.bundle_name, bundle_version=self.bundle_version, stages=list(self.cfg.stages)
        )

    async def _read(self, http: HttpRequest) -> tuple[Request, bytes | None]:
        """The request's image: bytes in the body, or {"uri": ...} in JSON. Size is checked
        from Content-Length before the body is read, and again while it streams in."""
        length = http.headers.get("content-length", "")
        if length and not length.isdigit():
            return refused("bad_request", f"Content-Length {length!r} is not a number"), None
        is_json = http.headers.get("content-type", "").startswith("application/json")
        limit = MAX_JSON_BYTES if is_json else self.cfg.max_bytes
        try:
            body = await read_body(http, limit)
        except BodyTooLarge:
            return refused("too_large", f"the body exceeds the limit of {limit} bytes"), None
        if not is_json:
            return uploaded(body), body
        try:
            uri = json.loads(body)["uri"]
            assert isinstance(uri, str) and uri
        except Exception:
            return refused(
                "bad_request",
                'a JSON request is {"uri": "<an object the server may read>"}; or send image bytes',
                len(body),
            ), None
        return await asyncio.to_thread(check_uri, uri, self.cfg), None

    @api.get("/", response_class=HTMLResponse)
    async def page(self) -> str:
        return self.page

    def _exposed(self, http: HttpRequest) -> None:
        self._authorize(http)
        if not self.cfg.expose_info:  # answered as a route that does not exist
            raise HTTPException(status_code=404)

    @api.get("/v1/info")
    async def info(self, http: HttpRequest) -> dict:
        self._exposed(http)
        return {
            "bundle": {"name": self.bundle_name, "version": self.bundle_version},
            "stages": list(self.cfg.stages),
            "max_bytes": self.cfg.max_bytes,
            "max_pixels": self.cfg.max_pixels,
            "work_max_side": self.cfg.work_max_side,
            "allow_uris": list(self.cfg.allow_uris),
            "part_colours": preview.PART_COLOURS,
            "garment_categories": list(self.garments),
            "error_status": HTTP_STATUS,
        }

    @api.get("/openapi.json")
    async def openapi(self, http: HttpRequest) -> dict:
        self._exposed(http)
        return api.openapi()

    @api.get("/docs")
    async def docs(self, http: HttpRequest) -> Response:
        self._exposed(http)
        return get_swagger_ui_html(openapi_url="openapi.json", title="fashion-ray")

    @api.post("/v1/label")
    async def label(self, http: HttpRequest, overlay: bool = False) -> Response:
        self._authorize(http)
        request, data = await self._read(http)
        request, row, drawn = await self._cascade(request, data, overlay)
        body = row_json(row)
        # where the time went, as browsers' devtools read it: "person;dur=812.4;desc="batch of 2", ..."
        timing = {
            "Server-Timing": ", ".join(
                f'{step};dur={seconds * 1000:.1f};desc="batch of {size}"'
                for step, (size, seconds) in request.served.items()
            )
        }
        if row["status"] != "ok":
            return JSONResponse(body, status_code=HTTP_STATUS.get(row["error"], 422), headers=timing)
        if drawn:
            body["overlay_png"] = drawn
        return JSONResponse(body, headers=timing)

    # --- Label Studio ML backend (Label Studio appends these to the backend URL) ---

    @api.get("/label-studio/")
    @api.get("/label-studio/health")
    async def ls_health(self, http: HttpRequest) -> dict:
        self._authorize(http)
        return {"status": "UP", "model_class": "fashion-ray cascade", "model_version": self.model_version}

    @api.get("/label-studio/metrics")
    async def ls_metrics(self, http: HttpRequest) -> dict:
        self._authorize(http)
        return {}  # the reference backend answers an empty object here too

    @api.get("/label-studio/config.xml")
    async def ls_config(self, http: HttpRequest) -> Response:
        """A labelling config that takes everything the cascade finds (paste it into a project)."""
        self._authorize(http)
        return Response(label_studio.recommended_config(self.garments), media_type="application/xml")

    async def _ls_request(self, http: HttpRequest, config_key: str) -> tuple[dict, label_studio.Targets]:
        """(JSON body, its labelling config's targets); ProtocolError (-> 4xx) otherwise. Only
        application/json is read: a web page cannot send that to another site without asking."""
        self._authorize(http)
        if not http.headers.get("content-type", "").startswith("application/json"):
            raise label_studio.ProtocolError("Label Studio sends application/json", status=415)
        body = await read_body(http, self.cfg.max_bytes)  # tasks may carry data: URIs of images
        try:
            payload = json.loads(body)
            assert isinstance(payload, dict)
        except Exception:
            raise label_studio.ProtocolError("the body is not a JSON object") from None
        return payload, label_studio.parse_label_config(payload.get(config_key) or "")

    @api.post("/label-studio/setup")
    async def ls_setup(self, http: HttpRequest) -> Response:
        payload, targets = await self._ls_request(http, "schema")
        if targets.unserved:  # a new project's empty config is connected first: accepted, and said why
            log.warning(
                "Label Studio project %s: nothing to predict for its labelling config: %s",
                payload.get("project"),
                targets.unserved,
            )
        sent = str(payload.get("hostname") or "")
        if sent and sent.rstrip("/") != self.label_studio.url.rstrip("/"):
            # images are read from the configured Label Studio only; a request cannot move it
            log.warning(
                "/setup names Label Studio at %r; this server reads task images from %r (label_studio_url)",
                sent,
                self.label_studio.url or "none configured",
            )
        return JSONResponse({"model_version": self.model_version})

    @api.post("/label-studio/predict")
    async def ls_predict(self, http: HttpRequest) -> Response:
        payload, targets = await self._ls_request(http, "label_config")
        tasks = payload.get("tasks") or []
        if isinstance(tasks, dict):  # one task, not in a list (the reference backend's tests send this)
            tasks = [tasks]
        if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
            raise label_studio.ProtocolError("'tasks' must be a list of task objects")
        if len(tasks) > self.cfg.label_studio_max_tasks:
            raise label_studio.ProtocolError(
                f"{len(tasks)} tasks in one request; at most "
                f"{self.cfg.label_studio_max_tasks} (label_studio_max_tasks)",
                status=413,
            )
        if targets.unserved:
            log.warning("Label Studio project %s: no predictions: %s", payload.get("project"), targets.unserved)
            return JSONResponse({"results": [[] for _ in tasks]})
        # every task at once (the stage deployments batch them); what is not done by the deadline
        # is answered with no prediction, so Label Studio's next "Retrieve predictions" continues there
        jobs = [asyncio.ensure_future(self._label_task(task, targets)) for task in tasks]
        done, late = await asyncio.wait(jobs, timeout=self.cfg.label_studio_deadline_s) if jobs else (set(), set())
        for job in late:
            job.cancel()
        if late:
            log.warning(
                "Label Studio /predict: %d of %d tasks not done within %g s (label_studio_deadline_s); "
                "answered without a prediction, to be asked again",
                len(late),
                len(tasks),
                self.cfg.label_studio_deadline_s,
            )
        return JSONResponse({"results": [_outcome(job) if job in done else [] for job in jobs]})

    async def _label_task(self, task: dict, targets: label_studio.Targets) -> dict | list:
        """A task's prediction, or [] (none) when one of its images cannot be read or labelled."""
        images = targets.images
        rows = await asyncio.gather(*(self._label_image(task, image) for image in images))
        return label_studio.prediction(dict(zip((i.name for i in images), rows)), targets, self.model_version) or []

    async def _label_image(self, task: dict, image: label_studio.ImageTarget) -> dict:
        """The row of one of a task's images; an image we may not or cannot read is an error row.
        At most label_studio_concurrency images of all requests are in the cascade at once."""
        async with self.ls_slots:
            try:
                kind, where = label_studio.task_image_source(task, image, self.label_studio, self.cfg.allow_uris)
                if kind == "uri":
                    request, data = await asyncio.to_thread(check_uri, where, self.cfg), None
                else:
                    data = await asyncio.get_running_loop().run_in_executor(
                        self.ls_readers,
                        functools.partial(
                            label_studio.read_task_image,
                            kind,
                            where,
                            self.label_studio,
                            self.cfg.max_bytes,
                            self.cfg.label_studio_fetch_timeout_s,
                        ),
                    )
                    request = uploaded(data)
            except Exception as exc:
                request, data = refused("unreadable", str(exc)[:300], uri=f"label-studio:task:{task.get('id')}"), None
            _, row, _ = await self._cascade(request, data)
            if row["status"] != "ok":
                log.warning(
                    "Label Studio task %s, image %r: no prediction: %s: %s",
                    task.get("id"),
                    image.name,
                    row["error"],
                    row["error_detail"],
                )
            return row

    @api.post("/label-studio/webhook")
    async def ls_webhook(self, http: HttpRequest) -> Response:
        self._authorize(http)
        try:
            event = (json.loads(await read_body(http, self.cfg.max_bytes)) or {}).get("action")
        except (ValueError, AttributeError):
            event = None
        if event not in TRAIN_EVENTS:
            return JSONResponse({"status": "Unknown event"})
        # the reference backend answers a training event 201; the cascade does not train online
        return JSONResponse({"result": None, "status": "ok"}, status_code=201)


# builder argument -> (ServeConfig field, how the text becomes its value)
SCALAR_ARGS = {
    "bundle": ("bundle", str),
    "max_bytes": ("max_bytes", int),
    "max_pixels": ("max_pixels", int),
    "decode_memory_mb": ("decode_memory_mb", int),
    "max_side": ("work_max_side", int),
    "batch_wait_ms": ("batch_wait_timeout_s", lambda v: float(v) / 1000),
    "auth_token_file": ("auth_token_file", str),
    "label_studio_url": ("label_studio_url", str),
    "label_studio_token_file": ("label_studio_token_file", str),
    "label_studio_concurrency": ("label_studio_concurrency", int),
    "label_studio_max_tasks": ("label_studio_max_tasks", int),
    "label_studio_deadline_s": ("label_studio_deadline_s", float),
    "label_studio_fetch_timeout_s": ("label_studio_fetch_timeout_s", float),
    "max_ongoing_requests": ("max_ongoing_requests", int),
    "max_queued_requests": ("max_queued_requests", int),
    "expose_info": ("expose_info", lambda v: str(v).lower() in ("1", "true", "yes")),
}
BUILD_ARGS = ("bundle", "stages", "device", "set", "allow_uris", *(k for k in SCALAR_ARGS if k != "bundle"))


def serve_config(args: dict) -> ServeConfig:
    """A ServeConfig from `serve run ... key=value` arguments (or a serve config's `args`)."""
    unknown = sorted(set(args) - set(BUILD_ARGS))
    if unknown:
        raise ConfigError(f"unknown argument(s) {', '.join(unknown)} (valid: {', '.join(BUILD_ARGS)})")
    kwargs = {}
    if "stages" in args:
        kwargs["stages"] = parse_stages(str(args["stages"]))
    device = str(args.get("device", "cpu"))
    overrides = [o.strip() for o in str(args.get("set") or "").split(",") if o.strip()]
    # on a CPU the served defaults (two person replicas); on a GPU the job's GPU preset
    kwargs["resources"] = (
        stage_resources(device, overrides) if device != "cpu" else apply_overrides(ServeConfig().resources, overrides)
    )
    for key, (name, parse) in SCALAR_ARGS.items():
        if key in args:
            try:
                kwargs[name] = parse(args[key])
            except ValueError:
                raise ConfigError(f"{key}={args[key]!r}: not a number") from None
    if args.get("allow_uris"):
        kwargs["allow_uris"] = tuple(p.strip() for p in str(args["allow_uris"]).split(",") if p.strip())
    return ServeConfig(**kwargs)


def application(cfg: ServeConfig):
    stages = [
        StageDeployment.options(name=f"stage-{stage}", **serve_deployment_options(cfg, stage)).bind(stage, cfg)
        for stage in cfg.stages
    ]
    # a bounded queue at the ingress: overload answers 503 at once instead of a long wait
    return Ingress.options(
        ray_actor_options={"num_cpus": cfg.ingress_num_cpus},
        max_ongoing_requests=cfg.max_ongoing_requests,
        max_queued_requests=cfg.max_queued_requests,
    ).bind(cfg, *stages)


def build(args: dict):
    """Application builder for `serve run fashion_ray.serving.app:build key=value ...`."""
    return application(serve_config(args))
