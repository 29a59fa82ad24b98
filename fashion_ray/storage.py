"""Filesystems from URIs, input listing and atomic writes.

Every path the project touches is a URI (local path, file://, s3://, gs://, ...). S3
endpoint and credentials come from the standard AWS environment variables
(AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...) or explicit options; they are never logged.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import stat
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

import fsspec
import pyarrow as pa

from fashion_ray.errors import InputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
# Images that may hold several frames (animated GIF/WebP) or pages (TIFF): probed like videos.
MULTI_FRAME_EXTENSIONS = (".gif", ".webp", ".tif", ".tiff")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".mkv", ".webm")
# Listed so they become "unsupported" error rows instead of vanishing from the run.
KNOWN_UNSUPPORTED_EXTENSIONS = (".heic", ".heif", ".avif")
MANIFEST_EXTENSIONS = (".txt", ".lst", ".csv")


class StorageError(InputError):
    """A URI that cannot be used; the message names what is wrong and what is valid."""


@dataclass(frozen=True)
class StorageOptions:
    """Connection options for object stores; None means "take it from the environment"."""

    endpoint_url: str | None = None
    anon: bool = False

    def for_protocol(self, protocol: str) -> dict:
        if protocol in ("s3", "s3a"):
            options: dict = {"anon": self.anon}
            endpoint = self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            if endpoint:
                options["client_kwargs"] = {"endpoint_url": endpoint}
            # Retries on throttling and transient 5xx are botocore's "standard" mode.
            options["config_kwargs"] = {"retries": {"max_attempts": 8, "mode": "standard"}}
            return options
        return {}


def split_uri(uri: str) -> tuple[str, str]:
    """Return (protocol, path-without-protocol); bare paths are local and made absolute."""
    if "://" not in uri:
        return "file", os.path.abspath(os.path.expanduser(uri))
    protocol, rest = uri.split("://", 1)
    if protocol == "file":
        return "file", os.path.abspath(rest)
    return protocol, rest


def filesystem(uri: str, options: StorageOptions | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return (fsspec filesystem, path within it) for a URI."""
    protocol, path = split_uri(uri)
    try:
        fs = fsspec.filesystem(protocol, **(options or StorageOptions()).for_protocol(protocol))
    except (ImportError, ValueError) as exc:
        known = ", ".join(sorted(p for p in ("file", "s3", "gs", "az", "memory")))
        raise StorageError(f"cannot open {uri!r}: {exc} (supported schemes include {known})") from None
    return fs, path


def join(uri: str, *parts: str) -> str:
    if "://" in uri:
        protocol, rest = uri.split("://", 1)
        return f"{protocol}://" + posixpath.join(rest.rstrip("/"), *parts)
    return os.path.join(uri, *parts)


def to_uri(protocol: str, path: str) -> str:
    return path if protocol == "file" else f"{protocol}://{path}"


def allowed_uri(uri: str, prefixes) -> str | None:
    """The URI to read if it lies under one of `prefixes`, else None.

    The check runs on what will be read, on whole path segments: a local path is resolved
    first (`..` and symlinks: a link out of the allowed folder is outside it); in object
    stores and on HTTP a `..` or `.` segment is refused, the scheme and host must be the
    prefix's own (`https://host@127.0.0.1/` is not under `https://host`), and
    `s3://bucket/uploads` does not admit `s3://bucket/uploads-private/`.
    """
    import urllib.parse

    def local(path: str) -> str:
        return os.path.realpath(os.path.expanduser(path[len("file://") :] if path.startswith("file://") else path))

    for prefix in prefixes:
        if "://" not in prefix or prefix.startswith("file://"):
            if "://" in uri and not uri.startswith("file://"):
                continue
            base, target = local(prefix), local(uri)
            if target == base or target.startswith(base.rstrip(os.sep) + os.sep):
                return target
            continue
        want, got = urllib.parse.urlsplit(prefix), urllib.parse.urlsplit(uri)
        if (got.scheme, got.netloc) != (want.scheme, want.netloc) or got.query or got.fragment:
            continue
        segments = urllib.parse.unquote(got.path).split("/")
        if any(part in ("..", ".") for part in segments):
            continue
        base = want.path.rstrip("/")
        if got.path == want.path or got.path.startswith(base + "/"):
            return uri
    return None


def stable_id(uri: str, frame_index: int | None = None) -> int:
    """A 52-bit id (exact in JSON doubles) from the URI and frame, identical in Parquet and COCO and across runs."""
    key = uri if frame_index is None else f"{uri}#{frame_index}"
    return int(hashlib.sha1(key.encode()).hexdigest()[:13], 16)


def _entry(protocol: str, info: dict) -> dict:
    mtime = info.get("LastModified") or info.get("mtime") or info.get("last_modified")
    if isinstance(mtime, (int, float)):
        mtime = datetime.fromtimestamp(mtime, tz=timezone.utc)
    uri = to_uri(protocol, info["name"])
    return {
        "id": stable_id(uri),
        "uri": uri,
        "size": int(info.get("size") or 0),
        "etag": str(info.get("ETag") or info.get("etag") or "").strip('"'),
        "mtime": mtime if isinstance(mtime, datetime) else None,
    }


def skip_reason(path: str) -> str | None:
    """Why a listed file is not an input: "hidden" (a name starting with ".": macOS's ._photo.jpg
    resource forks, editors' temporaries) or "not_media" (no image or video extension); None for an input."""
    name = posixpath.basename(path)
    if name.startswith("."):
        return "hidden"
    if not name.lower().endswith(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS + KNOWN_UNSUPPORTED_EXTENSIONS):
        return "not_media"
    return None


def iter_objects(fs: fsspec.AbstractFileSystem, protocol: str, path: str):
    """Yield the info dict of every object under a prefix, one listing page at a time.

    On S3 this is ListObjectsV2 paginated by continuation token (1,000 keys a request, each
    page through s3fs's retrying call): a million keys cost a thousand requests and never a
    million-entry dict. Other filesystems are walked folder by folder.
    """
    if protocol in ("s3", "s3a") and hasattr(fs, "call_s3"):
        bucket, _, prefix = path.partition("/")
        request = {"Bucket": bucket, "Prefix": prefix.rstrip("/") + "/" if prefix else ""}
        while True:
            page = fs.call_s3("list_objects_v2", **request)
            for obj in page.get("Contents", []):
                yield {
                    "name": f"{bucket}/{obj['Key']}",
                    "size": obj["Size"],
                    "ETag": obj.get("ETag"),
                    "LastModified": obj.get("LastModified"),
                    "type": "file",
                }
            if not page.get("IsTruncated"):
                return
            request["ContinuationToken"] = page["NextContinuationToken"]
    for _root, _dirs, files in fs.walk(path, detail=True):
        for _name, info in sorted(files.items()):
            yield info


LISTING_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("uri", pa.string()),
        ("size", pa.int64()),
        ("etag", pa.string()),
        ("mtime", pa.timestamp("us", tz="UTC")),
    ]
)


def list_inputs(
    uris: list[str],
    options: StorageOptions | None = None,
    page_rows: int = 10_000,
    skipped: dict[str, int] | None = None,
) -> pa.Table:
    """List every input object once, with size/etag/mtime, from prefixes, objects or manifests.

    A manifest is a text file with one URI per line. Listing happens once on the driver;
    later stages fetch bytes by path and never list again. The result is an Arrow table
    (LISTING_SCHEMA, one row per distinct URI, in listing order), built a page at a time.
    Files of a folder that are not inputs are counted in `skipped` by skip_reason.
    """
    skipped = {} if skipped is None else skipped
    pages, rows, seen = [], [], set()

    def add(entry: dict) -> None:
        if entry["id"] not in seen:
            seen.add(entry["id"])
            rows.append(entry)
            if len(rows) >= page_rows:
                pages.append(pa.Table.from_pylist(rows, schema=LISTING_SCHEMA))
                rows.clear()

    for uri in uris:
        fs, path = filesystem(uri, options)
        protocol = split_uri(uri)[0]
        if not fs.exists(path):
            raise StorageError(
                f"input {uri!r} does not exist (give a folder/prefix, an image, or a .txt manifest of URIs)"
            )
        if fs.isdir(path):
            for info in iter_objects(fs, protocol, path):
                if info.get("type") == "directory":
                    continue
                reason = skip_reason(info["name"]) if info.get("type") == "file" else "not_a_regular_file"
                if reason:
                    skipped[reason] = skipped.get(reason, 0) + 1
                else:
                    add(_entry(protocol, info))
        elif path.lower().endswith(MANIFEST_EXTENSIONS):
            for item in stat_objects(
                manifest_uris(fs.cat_file(path).decode(), csv_file=path.lower().endswith(".csv")), options
            ):
                add(item)
        else:
            add(_entry(protocol, fs.info(path)))
    pages.append(pa.Table.from_pylist(rows, schema=LISTING_SCHEMA))
    return pa.concat_tables(pages)


def manifest_uris(text: str, csv_file: bool) -> list[str]:
    """The URIs a manifest names: a .txt has one per line, as written (a comma is part of a
    name); a .csv has them in its first column, read as CSV (quoted names with commas), after
    an optional header row whose first cell is "uri". Blank lines and lines starting with #
    are skipped."""
    import csv

    lines = [row[0] if row else "" for row in csv.reader(text.splitlines())] if csv_file else text.splitlines()
    if csv_file and lines and lines[0].strip().lower() == "uri":
        lines = lines[1:]
    return [u.strip() for u in lines if u.strip() and not u.strip().startswith("#")]


def stat_objects(uris: list[str], options: StorageOptions | None) -> list[dict]:
    """Stat objects named in a manifest; a missing object still yields an entry (-> error row)."""
    out = []
    for uri in uris:
        fs, path = filesystem(uri, options)
        protocol = split_uri(uri)[0]
        try:
            out.append(_entry(protocol, fs.info(path)))
        except FileNotFoundError:
            out.append(
                {
                    "id": stable_id(to_uri(protocol, path)),
                    "uri": to_uri(protocol, path),
                    "size": 0,
                    "etag": "",
                    "mtime": None,
                }
            )
    return out


def open_regular_file(path: str):
    """A local file opened for reading, if it is a regular file: a FIFO or a device under an
    input folder or an allowed prefix would block its reader forever. Opened without blocking
    and checked on the open file, so a file swapped after a stat is caught."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    handle = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        handle.close()
        raise StorageError(f"{path} is not a regular file")
    return handle


def read_regular_file(path: str, limit: int | None = None) -> bytes:
    """A local file's bytes (at most `limit`), if it is a regular file (open_regular_file)."""
    with open_regular_file(path) as fh:
        return fh.read() if limit is None else fh.read(limit)


def fetch_many(uris: list[str], options: StorageOptions | None = None) -> list[bytes | Exception]:
    """Fetch whole objects, concurrently where the filesystem supports it (s3fs batches `cat`)."""
    by_fs: dict[int, tuple] = {}
    out: list = [None] * len(uris)
    for i, uri in enumerate(uris):
        fs, path = filesystem(uri, options)
        if split_uri(uri)[0] == "file":
            try:
                out[i] = read_regular_file(path)
            except Exception as exc:
                out[i] = exc
            continue
        by_fs.setdefault(id(fs), (fs, []))[1].append((i, path))
    for fs, items in by_fs.values():
        got = fs.cat([p for _, p in items], on_error="return")
        for i, path in items:
            out[i] = got.get(path, FileNotFoundError(path)) if isinstance(got, dict) else got
    return out


def fetch_bounded(uri: str, max_bytes: int, options: StorageOptions | None = None) -> bytes:
    """At most max_bytes + 1 bytes of an object: one byte more than allowed says "too large"
    without reading an object that grew after it was listed."""
    fs, path = filesystem(uri, options)
    if split_uri(uri)[0] == "file":
        return read_regular_file(path, max_bytes + 1)
    with fs.open(path, "rb") as fh:
        return fh.read(max_bytes + 1)


def write_bytes_atomic(uri: str, data: bytes, options: StorageOptions | None = None) -> None:
    """Write so readers never see a partial file: temp + rename locally, one PUT on object stores."""
    fs, path = filesystem(uri, options)
    if split_uri(uri)[0] == "file":
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    else:
        fs.pipe_file(path, data)
