"""Model bundles: a bundle.json manifest plus weight files, loadable from any fsspec URI.

    bundle.json = {
      "format": "fashion-ray-bundle/1", "name": "fashion-v1", "version": "2026.11.1",
      "stages": {
        "person":   {"architecture": "fasterrcnn_mobilenet_v3_large_320_fpn", "classes": ["person"],
                     "input_size": 320, "score_threshold": 0.5, "mask_threshold": 0.5,
                     "weights": "person.pt", "sha256": "<hex>", "options": {}},
        "clothing": {...}, "parts": {...}
      }
    }

"weights" (and each file in a stage's options["files"]) is a path inside the bundle folder:
relative, no "..", no URI, so a manifest cannot make a reader fetch, or a publish write,
anything outside it; every "sha256" is 64 hex digits. Weight files are state
dicts read with torch.load(weights_only=True) after their sha256 is checked. Files from
object storage are kept in a per-machine cache keyed by sha256 ($FASHION_RAY_CACHE, default
~/.cache/fashion-ray): the driver's check and every actor of a node share one download.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import io
import json
import logging
import os
import re
from dataclasses import dataclass, field

from fashion_ray import storage
from fashion_ray.actions import RULE_ACTIONS
from fashion_ray.errors import InputError
from fashion_ray.taxonomy import AVA_ACTIONS, STAGES

BUNDLE_FORMAT = "fashion-ray-bundle/1"
log = logging.getLogger(__name__)

BUILTIN_BUNDLES_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "assets", "bundles")


class BundleError(InputError):
    """A bundle that cannot be used: missing, malformed, or weights that fail their checksum."""


@dataclass(frozen=True)
class StageModel:
    architecture: str
    classes: tuple[str, ...]
    input_size: int = 320
    score_threshold: float = 0.5
    mask_threshold: float = 0.5
    weights: str | None = None  # a path inside the bundle folder, or None (random init)
    sha256: str | None = None
    # model tuning and extra model files (manifest key "options"); not storage options
    model_options: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, stage: str, raw: dict) -> "StageModel":
        known = {f.name for f in dataclasses.fields(cls)} - {"model_options"} | {"options"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise BundleError(f"stage {stage!r}: unknown keys {unknown} (valid: {sorted(known)})")
        if "architecture" not in raw or "classes" not in raw:
            raise BundleError(f"stage {stage!r}: 'architecture' and 'classes' are required")
        fields = {k: v for k, v in raw.items() if k not in ("options", "classes")}
        return cls(**fields, classes=tuple(raw["classes"]), model_options=dict(raw.get("options") or {}))

    def as_manifest(self) -> dict:
        entry = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "model_options"}
        return entry | {"classes": list(self.classes), "options": self.model_options}


@dataclass(frozen=True)
class Bundle:
    name: str
    version: str
    uri: str  # folder the manifest was read from; relative weight paths resolve against it
    stages: dict[str, StageModel]
    # what workers pass to load_bundle: a built-in's name (its folder differs per node and
    # per runtime_env working dir) or the URI
    ref: str = ""

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"

    def to_json(self) -> dict:
        return {
            "format": BUNDLE_FORMAT,
            "name": self.name,
            "version": self.version,
            "stages": {k: v.as_manifest() for k, v in self.stages.items()},
        }

    def resolve(self, relative: str) -> str:
        return storage.join(self.uri, relative)  # load_bundle checked that it stays inside


# the bootstrap bundle's actions stage (its bundle.json says the same; tests/test_actions.py checks)
ACTION_RULES = StageModel(
    "pose_motion_rules", tuple(AVA_ACTIONS[k] for k in sorted(RULE_ACTIONS)), input_size=0, score_threshold=0.3
)


def builtin_bundles() -> list[str]:
    if not os.path.isdir(BUILTIN_BUNDLES_DIR):
        return []
    return sorted(
        d
        for d in os.listdir(BUILTIN_BUNDLES_DIR)
        if os.path.isfile(os.path.join(BUILTIN_BUNDLES_DIR, d, "bundle.json"))
    )


def load_bundle(uri: str, options: storage.StorageOptions | None = None) -> Bundle:
    """Read a bundle manifest from a folder URI (or the name of a built-in bundle)."""
    ref = uri
    if "://" not in uri and not os.path.exists(uri) and uri in builtin_bundles():
        uri = os.path.join(BUILTIN_BUNDLES_DIR, uri)
    else:
        ref = uri if "://" in uri else os.path.abspath(uri)
    manifest_uri = uri if uri.endswith(".json") else storage.join(uri, "bundle.json")
    folder = manifest_uri.rsplit("/", 1)[0] if "://" in manifest_uri else os.path.dirname(manifest_uri)
    fs, path = storage.filesystem(manifest_uri, options)
    try:
        raw = json.loads(fs.cat_file(path))
    except FileNotFoundError:
        raise BundleError(
            f"no bundle at {uri!r}: expected {manifest_uri} (built-in bundles: {', '.join(builtin_bundles()) or 'none'})"
        ) from None
    except json.JSONDecodeError as exc:
        raise BundleError(f"{manifest_uri}: not valid JSON ({exc})") from None
    if raw.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{manifest_uri}: format {raw.get('format')!r} is not {BUNDLE_FORMAT!r}")
    unknown = sorted(set(raw) - {"format", "name", "version", "stages"})
    if unknown:
        raise BundleError(f"{manifest_uri}: unknown keys {unknown}")
    bad_stages = sorted(set(raw.get("stages", {})) - set(STAGES))
    if bad_stages:
        raise BundleError(f"{manifest_uri}: unknown stages {bad_stages} (valid: {', '.join(STAGES)})")
    stages = {name: StageModel.from_dict(name, spec) for name, spec in raw["stages"].items()}
    for name, spec in stages.items():
        check_files(f"{manifest_uri}: stage {name!r}", spec)
    # a bundle without an actions stage (one published before 1.2) gets the rules, which need no
    # weights: the default stages keep working with every bundle
    stages.setdefault("actions", ACTION_RULES)
    return Bundle(name=str(raw["name"]), version=str(raw["version"]), uri=folder, stages=stages, ref=ref)


def _fetch_checked(bundle: Bundle, relative: str, sha256: str, options) -> bytes:
    uri = bundle.resolve(relative)
    fs, path = storage.filesystem(uri, options)
    try:
        data = fs.cat_file(path)
    except FileNotFoundError:
        raise BundleError(f"bundle {bundle.label}: file {uri} is missing") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise BundleError(
            f"bundle {bundle.label}: sha256 mismatch for {uri}: manifest {sha256[:12]}..., file {digest[:12]}..."
        )
    return data


def _cached(sha256: str) -> bytes | None:
    try:
        with open(os.path.join(cache_dir(), sha256), "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    return data if hashlib.sha256(data).hexdigest() == sha256 else None  # a damaged copy is fetched again


def _keep(sha256: str, data: bytes) -> None:
    path = os.path.join(cache_dir(), sha256)
    try:
        with open(f"{path}.{os.getpid()}.tmp", "wb") as fh:
            fh.write(data)
        os.replace(f"{path}.{os.getpid()}.tmp", path)
    except OSError as exc:  # a full or read-only disk costs a download, never the run
        log.warning("bundle cache %s not written: %s", path, exc)


def cache_dir() -> str:
    return os.environ.get("FASHION_RAY_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "fashion-ray")


def read_checked(
    bundle: Bundle, relative: str, sha256: str | None, options: storage.StorageOptions | None = None
) -> bytes:
    """A file of the bundle, its sha256 verified (required for every file). Remote files go
    through the machine's cache: under a lock, so that the actors starting together on a node
    wait for one download instead of each making their own."""
    if not sha256:
        raise BundleError(f"bundle {bundle.label}: {relative} has no sha256 in the manifest")
    if "://" not in bundle.resolve(relative):  # a local file is its own cache
        return _fetch_checked(bundle, relative, sha256, options)
    try:
        os.makedirs(cache_dir(), exist_ok=True)
        lock = open(os.path.join(cache_dir(), f"{sha256}.lock"), "a")
    except OSError as exc:
        log.warning("bundle cache %s unusable: %s", cache_dir(), exc)
        return _fetch_checked(bundle, relative, sha256, options)
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        data = _cached(sha256)
        if data is None:
            data = _fetch_checked(bundle, relative, sha256, options)
            _keep(sha256, data)
    return data


def bundle_files(stage: StageModel) -> list[tuple[str, str | None]]:
    """(relative path, sha256) of every file a stage needs: its weights and any model files."""
    files = [(stage.weights, stage.sha256)] if stage.weights else []
    return files + [(f["path"], f.get("sha256")) for f in stage.model_options.get("files", {}).values()]


SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def check_files(where: str, stage: StageModel) -> None:
    """BundleError unless every file of the stage is a path inside the bundle with a hex sha256."""
    files = stage.model_options.get("files", {})
    if not isinstance(files, dict) or not all(isinstance(f, dict) and "path" in f for f in files.values()):
        raise BundleError(f"{where}: options.files maps names to {{'path': ..., 'sha256': ...}}")
    for relative, sha256 in bundle_files(stage):
        parts = str(relative).replace("\\", "/").split("/")
        if (
            not isinstance(relative, str)
            or "://" in relative
            or relative.startswith(("/", "~"))
            or ":" in parts[0]
            or any(part in ("", ".", "..") for part in parts)
        ):
            raise BundleError(
                f"{where}: file {relative!r} is not a path inside the bundle folder (relative, without '..', no URI)"
            )
        if sha256 is not None and not (isinstance(sha256, str) and SHA256_HEX.fullmatch(sha256)):
            raise BundleError(f"{where}: the sha256 of {relative!r} is not 64 lower-case hex digits")


def verify_bundle(bundle: Bundle, stages, options: storage.StorageOptions | None = None) -> None:
    """Check every file of the stages in use against its sha256 before any worker starts."""
    for name in stages:
        for relative, sha256 in bundle_files(bundle.stages[name]):
            read_checked(bundle, relative, sha256, options)


def load_state_dict(bundle: Bundle, stage: StageModel, options: storage.StorageOptions | None = None) -> dict:
    import torch

    data = read_checked(bundle, stage.weights, stage.sha256, options)
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def save_bundle(
    uri: str,
    name: str,
    version: str,
    stages: dict[str, tuple[StageModel, dict | None]],
    options: storage.StorageOptions | None = None,
) -> Bundle:
    """Write weights (state dicts) and bundle.json; the manifest is written last."""
    import torch

    written: dict[str, StageModel] = {}
    for stage_name, (spec, state_dict) in stages.items():
        if state_dict is not None:
            buf = io.BytesIO()
            torch.save(state_dict, buf)
            data = buf.getvalue()
            filename = f"{stage_name}.pt"
            storage.write_bytes_atomic(storage.join(uri, filename), data, options)
            spec = dataclasses.replace(spec, weights=filename, sha256=hashlib.sha256(data).hexdigest())
        written[stage_name] = spec
    bundle = Bundle(name=name, version=version, uri=uri, stages=written)
    storage.write_bytes_atomic(
        storage.join(uri, "bundle.json"), json.dumps(bundle.to_json(), indent=2).encode(), options
    )
    return bundle
