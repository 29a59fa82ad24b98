"""One writer per output location: a lease object under the output prefix.

`_lease.json` names the run that holds the output (run id, host, pid) and when its lease
expires. A second run finds it and stops with a message naming the holder. The holder
renews the lease from a background thread; a holder that died stops renewing, and after
the lease expires (or at once, when the holder was a process on this host that no longer
exists) the next run takes the lease over.

On S3 every change is a conditional PUT (If-None-Match: * to take a free lease, If-Match:
<etag> to renew or take over an expired one), so two runs can never both win. Local
folders use O_EXCL creation. Other fsspec stores fall back to write-then-read-back, which
narrows the race but cannot close it.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field

from fashion_ray import storage
from fashion_ray.errors import RunError

LEASE_NAME = "_lease.json"


class LeaseHeldError(RunError):
    """Another run holds the output; the message names it."""


class LeaseLostError(RunError):
    """This run's lease was taken over (it stopped renewing in time); it must not commit."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_stale(record: dict) -> bool:
    if record.get("expires_at", 0) < time.time():
        return True
    return record.get("host") == socket.gethostname() and not _pid_alive(int(record.get("pid", 0)))


def _describe(record: dict) -> str:
    left = max(0, int(record.get("expires_at", 0) - time.time()))
    return (
        f"run {record.get('run_id', '?')} (host {record.get('host', '?')}, pid {record.get('pid', '?')}, "
        f"since {record.get('acquired_at_iso', '?')}; lease expires in {left} s unless renewed)"
    )


@dataclass
class Lease:
    output: str
    run_id: str
    ttl_s: float
    options: storage.StorageOptions | None = None
    _acquired_at: float = 0.0
    _etag: str | None = None
    _lost: str | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _renewing: threading.Lock = field(default_factory=threading.Lock)  # heartbeat and commits both renew
    _thread: threading.Thread | None = None

    @property
    def uri(self) -> str:
        return storage.join(self.output, LEASE_NAME)

    def _record(self, acquired_at: float | None = None) -> bytes:
        now = time.time()
        return json.dumps(
            {
                "run_id": self.run_id,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "acquired_at": acquired_at or now,
                "acquired_at_iso": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(acquired_at or now)),
                "expires_at": now + self.ttl_s,
            }
        ).encode()

    def _read(self) -> tuple[dict | None, str | None]:
        fs, path = storage.filesystem(self.uri, self.options)
        fs.invalidate_cache(path)  # another run's write must be seen, not a cached listing
        try:
            info = fs.info(path)
            return json.loads(fs.cat_file(path)), str(info.get("ETag") or "") or None
        except FileNotFoundError:
            return None, None
        except ValueError:  # half-written by a crashed non-S3 writer: treat as stale
            return {"expires_at": 0}, None

    def _write(self, *, create: bool, if_match: str | None = None) -> bool:
        """One conditional write; False when the precondition failed."""
        fs, path = storage.filesystem(self.uri, self.options)
        protocol = storage.split_uri(self.uri)[0]
        data = self._record(self._acquired_at)
        if protocol in ("s3", "s3a"):
            try:
                if create:
                    out = fs.pipe_file(path, data, mode="create")
                else:
                    out = fs.pipe_file(path, data, **({"IfMatch": if_match} if if_match else {}))
            except FileExistsError:
                return False
            except OSError as exc:
                if "pre-condition" in str(exc).lower() or "precondition" in str(exc).lower():
                    return False
                raise
            self._etag = (out or {}).get("ETag")
            return True
        if protocol == "file":
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if create:
                try:
                    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    return False
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                return True
            storage.write_bytes_atomic(self.uri, data, self.options)
            return True
        if create and fs.exists(path):
            return False
        fs.pipe_file(path, data)
        return json.loads(fs.cat_file(path)).get("run_id") == self.run_id

    def acquire(self) -> "Lease":
        self._acquired_at = time.time()
        if not self._write(create=True) and not self._take_over():
            record, _ = self._read()
            raise LeaseHeldError(
                f"output {self.output} is in use by {_describe(record or {})}; "
                "wait for it to finish (a lease that is not renewed expires)"
            )
        self._thread = threading.Thread(target=self._heartbeat, name="fashion-ray-lease", daemon=True)
        self._thread.start()
        return self

    def _take_over(self) -> bool:
        """After a failed create: take a stale lease over; True when the lease is ours."""
        record, etag = self._read()
        if record is None:  # released between our create and our read
            return self._write(create=True)
        if record.get("run_id") == self.run_id:  # our create landed but its response was lost
            self._etag = etag
            return True
        if not _is_stale(record):
            return False
        if storage.split_uri(self.uri)[0] == "file":
            fs, path = storage.filesystem(self.uri, self.options)
            fs.rm_file(path)
            return self._write(create=True)
        return self._write(create=False, if_match=etag)

    def renew(self) -> None:
        """Extend the lease; raises LeaseLostError if another run holds it now."""
        with self._renewing:
            self._renew()

    def _renew(self) -> None:
        if self._lost:
            raise LeaseLostError(self._lost)
        record, etag = self._read()
        if record is None or record.get("run_id") != self.run_id:
            self._lost = (
                f"lease on {self.output} was taken over by {_describe(record or {})}; this run commits nothing more"
            )
            raise LeaseLostError(self._lost)
        if not self._write(create=False, if_match=etag or self._etag):
            self._lost = f"lease on {self.output} changed while renewing; this run commits nothing more"
            raise LeaseLostError(self._lost)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            try:
                self.renew()
            except LeaseLostError:
                return
            except OSError:
                continue  # a transient store error; the next beat (well before expiry) tries again

    def release(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        record, _ = self._read()
        if record is not None and record.get("run_id") == self.run_id:
            fs, path = storage.filesystem(self.uri, self.options)
            fs.rm_file(path)


def acquire_lease(
    output: str, ttl_s: float, options: storage.StorageOptions | None = None, run_id: str | None = None
) -> Lease:
    return Lease(output=output, run_id=run_id or uuid.uuid4().hex, ttl_s=ttl_s, options=options).acquire()
