"""What an output location holds: the committed manifest, the ledger, and commits.

Layout under the output URI:

    manifest.json   the commit point; lists the live shards and ledger files. Readers trust only it.
    parquet/ coco/  shards, named part-<hash of run id and ids> (a run never overwrites a live file)
    ava/            AVA detection CSV: the actions of the tracked persons of a shard's video frames
    ledger/         Parquet, one row per label row: its id, the input it came from (source: the
                    image itself, or the video of a frame) with uri, etag, size, mtime and
                    fingerprint, the bundle (name@version), the run and the shard holding the row
    _lease.json     the lease of the run writing here (lease.py)

`commit` is the whole commit sequence: superseded rows rewritten out, the ledger rows as a
new ledger file, then manifest.json in one atomic write; a run's last commit also removes
unlisted files and folds a long ledger into one file. A crash before the manifest leaves
only unlisted files, which the next run removes. An input relabelled because it changed
(or for a new bundle) supersedes its old rows: the old shards are rewritten without them in
the same commit, so every row exists once.
"""

from __future__ import annotations

import functools
import io
import json
import re
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fashion_ray import __version__, storage
from fashion_ray.config import RELABEL_CHOICES
from fashion_ray.formats.schema import SCHEMA_VERSION
from fashion_ray.formats.shards import Shard, read_shard_rows, shard_totals, write_rows
from fashion_ray.storage import VIDEO_EXTENSIONS, stable_id

LEDGER_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("source", pa.int64()),
        ("uri", pa.string()),
        ("size", pa.int64()),
        ("etag", pa.string()),
        ("mtime", pa.timestamp("us", tz="UTC")),
        ("fingerprint", pa.string()),
        ("bundle", pa.string()),
        ("run", pa.string()),
        ("shard", pa.string()),
    ]
)
RUN_INFO_KEYS = ("config", "bundle", "last_run")  # what a commit records about the run that made it
MAX_LEDGER_FILES = 8  # past this many, a run's last commit folds the ledger into one file


def fingerprint(listing: pa.Table) -> pa.Array:
    """What identifies an object's content: its ETag, or size + mtime where the store has no ETag."""
    fallback = pc.binary_join_element_wise(
        pc.cast(listing["size"], pa.string()), pc.fill_null(pc.cast(listing["mtime"], pa.string()), ""), ":"
    )
    return pc.if_else(pc.equal(listing["etag"], ""), fallback, listing["etag"])


def ledger_rows(
    listing: pa.Table,
    ids_by_shard: dict[str, list[int]],
    bundle: str,
    run_id: str = "",
    source_of: dict[int, int] | None = None,
) -> pa.Table:
    """Ledger rows for freshly written shards, from the run's listing (source_of: row id -> input id, default itself)."""
    ids = [i for name, shard_ids in ids_by_shard.items() for i in shard_ids]
    rows = pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "source": pa.array([(source_of or {}).get(i, i) for i in ids], pa.int64()),
            "shard": pa.array([name for name, shard_ids in ids_by_shard.items() for _ in shard_ids], pa.string()),
        }
    )
    inputs = listing.append_column("fingerprint", fingerprint(listing)).rename_columns(
        ["source", "uri", "size", "etag", "mtime", "fingerprint"]
    )
    joined = rows.join(inputs, "source", join_type="inner")
    n = joined.num_rows
    return (
        joined.append_column("bundle", pa.array([bundle] * n, pa.string()))
        .append_column("run", pa.array([run_id] * n, pa.string()))
        .select(LEDGER_SCHEMA.names)
        .cast(LEDGER_SCHEMA)
    )


def latest_per_id(table: pa.Table, key: str = "id") -> pa.Table:
    """Keep the last row of each key (ledger files are concatenated in commit order)."""
    if table.num_rows == 0:
        return table
    indexed = table.append_column("_row", pa.array(range(table.num_rows), pa.int64()))
    last = indexed.group_by(key).aggregate([("_row", "max")])["_row_max"]
    return table.take(pc.take(last, pc.sort_indices(last)))


def classify(listing: pa.Table, ledger: pa.Table, bundle: str, relabel: str) -> tuple[pa.Table, dict]:
    """Split a listing into what to label now and counts per reason.

    new: not in the ledger; changed: its fingerprint differs; outdated: labelled by another
    bundle; unchanged: the rest. New and changed inputs are always labelled; outdated ones
    with relabel="outdated" or "all"; everything with relabel="all".
    """
    if relabel not in RELABEL_CHOICES:
        raise ValueError(f"relabel {relabel!r} is not one of: {', '.join(RELABEL_CHOICES)}")
    prior = (
        latest_per_id(ledger, "source")
        .select(["source", "fingerprint", "bundle"])
        .rename_columns(["id", "prior_fingerprint", "prior_bundle"])
    )
    joined = listing.append_column("fingerprint", fingerprint(listing)).join(prior, "id", join_type="left outer")
    new = pc.is_null(joined["prior_fingerprint"])
    # comparisons with a missing prior are null; those rows are new, not changed or outdated
    changed = pc.fill_null(pc.not_equal(joined["fingerprint"], joined["prior_fingerprint"]), False)
    outdated = pc.and_(
        pc.invert(pc.or_(new, changed)), pc.fill_null(pc.not_equal(joined["prior_bundle"], bundle), False)
    )
    todo = pc.or_(new, changed)
    if relabel in ("outdated", "all"):
        todo = pc.or_(todo, outdated)
    if relabel == "all":
        todo = pa.array([True] * joined.num_rows, pa.bool_())
    counts = {
        "listed": listing.num_rows,
        "new": pc.sum(new).as_py() or 0,
        "changed": pc.sum(changed).as_py() or 0,
        "outdated": pc.sum(outdated).as_py() or 0,
    }
    counts["unchanged"] = counts["listed"] - counts["new"] - counts["changed"] - counts["outdated"]
    counts["to_label"] = pc.sum(todo).as_py() or 0
    return joined.filter(todo).select(listing.column_names), counts


@dataclass
class OutputState:
    """The committed state of an output location (empty for a fresh one)."""

    output: str
    manifest: dict | None
    ledger: pa.Table
    options: storage.StorageOptions | None = None

    @property
    def shards(self) -> list[dict]:
        return list((self.manifest or {}).get("shards", []))

    @property
    def ledger_files(self) -> list[str]:
        return list((self.manifest or {}).get("ledger", []))

    def live_files(self) -> set[str]:
        """Relative paths the manifest keeps alive."""
        return {s[k] for s in self.shards for k in ("parquet", "coco", "ava") if k in s} | set(self.ledger_files)


def _read_parquet(uri: str, options, columns=None) -> pa.Table:
    fs, path = storage.filesystem(uri, options)
    return pq.read_table(io.BytesIO(fs.cat_file(path)), columns=columns)


def empty_state(output: str, options=None) -> OutputState:
    return OutputState(output, None, LEDGER_SCHEMA.empty_table(), options)


def load_state(output: str, options=None) -> OutputState:
    fs, path = storage.filesystem(storage.join(output, "manifest.json"), options)
    fs.invalidate_cache()  # filesystems are cached per process; another run may have committed since
    if not fs.exists(path):
        return empty_state(output, options)
    manifest = json.loads(fs.cat_file(path))
    if "ledger" in manifest:
        parts = [_read_parquet(storage.join(output, f), options).cast(LEDGER_SCHEMA) for f in manifest["ledger"]]
        ledger = latest_per_id(pa.concat_tables(parts)) if parts else LEDGER_SCHEMA.empty_table()
    else:  # written before the ledger existed: rebuild it from the shards themselves
        ledger = _ledger_from_shards(output, manifest["shards"], options)
    return OutputState(output, manifest, ledger, options)


def _ledger_from_shards(output: str, shards: list[dict], options) -> pa.Table:
    parts = []
    for shard in shards:
        t = _read_parquet(
            storage.join(output, shard["parquet"]),
            options,
            ["id", "uri", "size", "etag", "mtime", "bundle_name", "bundle_version"],
        )
        bundle = pc.binary_join_element_wise(t["bundle_name"], t["bundle_version"], "@")
        parts.append(
            pa.table(
                {
                    "id": t["id"],
                    "source": pa.array([stable_id(u) for u in t["uri"].to_pylist()], pa.int64()),
                    **{n: t[n] for n in ("uri", "size", "etag", "mtime")},
                    "fingerprint": fingerprint(t),
                    "bundle": bundle,
                    "run": pa.array([""] * t.num_rows, pa.string()),
                    "shard": pa.array([shard["name"]] * t.num_rows, pa.string()),
                },
                schema=LEDGER_SCHEMA,
            )
        )
    return pa.concat_tables(parts) if parts else LEDGER_SCHEMA.empty_table()


def _rewrite_without(state: OutputState, entry: dict, drop: set[int], run_id: str) -> Shard | None:
    """Rewrite a live shard without the rows in `drop` (None when no row is left)."""
    rows = [r for r in read_shard_rows(state.output, entry, state.options) if r["id"] not in drop]
    if not rows:
        return None
    # a salt of its own: the run's new shards may hold exactly the kept ids, and are written concurrently
    return write_rows(
        rows,
        output=state.output,
        salt=f"{run_id}:rewrite",
        storage_options=state.options,
        info={"description": "fashion-ray labels (rewritten without superseded rows)"},
    )


def commit(
    state: OutputState,
    new_shards: list[Shard],
    new_ledger: pa.Table,
    *,
    run_id: str,
    run_info: dict,
    before_write=None,
    final: bool = False,
) -> OutputState:
    """Commit new shards (and their ledger rows) on top of `state`; returns the new state.

    Rows that earlier runs made from the same inputs are superseded: their old shards are
    rewritten without them. `before_write` runs just before each manifest.json write (the
    lease check). A run's `final` commit also removes unlisted files and compacts the ledger.
    """
    state = _commit(state, [s.entry() for s in new_shards], new_ledger, run_id, run_info, before_write)
    if final:
        remove_garbage(state)
        if len(state.ledger_files) > MAX_LEDGER_FILES:
            state = compact(state, run_id, before_write=before_write)
            remove_garbage(state)
    return state


def _commit(
    state: OutputState, new_shards: list[dict], new_ledger: pa.Table, run_id: str, run_info: dict, before_write
) -> OutputState:
    shards = {s["name"]: s for s in state.shards}
    ledger_parts = [new_ledger]
    old = state.ledger.filter(
        pc.and_(pc.is_in(state.ledger["source"], new_ledger["source"]), pc.not_equal(state.ledger["run"], run_id))
    )
    superseded = set(old["id"].to_pylist())
    for name in sorted(set(old["shard"].to_pylist())):
        if name not in shards:
            continue  # a manifest edited by hand, or a shard already gone: nothing to supersede
        rewritten = _rewrite_without(state, shards.pop(name), superseded, run_id)
        if rewritten:
            shards[rewritten.name] = rewritten.entry()
            moved = state.ledger.filter(pc.is_in(state.ledger["id"], pa.array(rewritten.ids, pa.int64())))
            ledger_parts.append(
                moved.set_column(
                    moved.schema.get_field_index("shard"),
                    "shard",
                    pa.array([rewritten.name] * moved.num_rows, pa.string()),
                )
            )
    delta = pa.concat_tables(ledger_parts)
    seq = _next_seq(state)
    ledger_files = state.ledger_files
    if delta.num_rows:
        ledger_files = ledger_files + [f"ledger/{seq:06d}-{run_id[:12]}.parquet"]
        _write_parquet(state, ledger_files[-1], delta)
    gone = pc.is_in(state.ledger["id"], pa.array(list(superseded | set(delta["id"].to_pylist())), pa.int64()))
    ledger = pa.concat_tables([state.ledger.filter(pc.invert(gone)), delta])
    return write_manifest(
        state,
        list(shards.values()) + new_shards,
        ledger_files,
        ledger,
        run_id=run_id,
        seq=seq,
        extra=run_info,
        before_write=before_write,
    )


def _write_parquet(state: OutputState, relative: str, table: pa.Table) -> None:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    storage.write_bytes_atomic(storage.join(state.output, relative), buf.getvalue(), state.options)


def _next_seq(state: OutputState) -> int:
    return int(((state.manifest or {}).get("commit") or {}).get("seq", 0)) + 1


def compact(state: OutputState, run_id: str, before_write=None) -> OutputState:
    """Replace many ledger files by one holding the current ledger (keeps loading cheap)."""
    seq = _next_seq(state)
    ledger_file = f"ledger/{seq:06d}-{run_id[:12]}-compact.parquet"
    _write_parquet(state, ledger_file, state.ledger)
    extra = {k: v for k, v in state.manifest.items() if k in RUN_INFO_KEYS}
    return write_manifest(
        state, state.shards, [ledger_file], state.ledger, run_id=run_id, seq=seq, extra=extra, before_write=before_write
    )


def write_manifest(
    state: OutputState,
    shards: list[dict],
    ledger_files: list[str],
    ledger: pa.Table,
    *,
    run_id: str,
    seq: int,
    extra: dict,
    before_write=None,
) -> OutputState:
    errors: dict[str, int] = {}
    for s in shards:
        for reason, n in s["errors"].items():
            errors[reason] = errors.get(reason, 0) + n
    totals = shard_totals(shards)
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "fashion_ray_version": __version__,
        "run_id": run_id,
        "output": state.output,
        "commit": {"seq": seq, "run_id": run_id},
        **extra,
        "counts": {
            "inputs": pc.count_distinct(ledger["source"]).as_py(),
            "rows": ledger.num_rows,
            "ok": totals["ok"],
            "error": ledger.num_rows - totals["ok"],
            "videos": _count_videos(ledger),
            "frames": totals["frames"],
            "persons": totals["persons"],  # confident: candidates under the person threshold are counted apart
            "candidates": totals["candidates"],
            "objects": totals["objects"],  # accessories no person holds (confident)
            "object_candidates": totals["object_candidates"],  # accessories under the accessory threshold
            "garments": totals["garments"],
            "parts": totals["parts"],
            "tracks": totals["tracks"],
            "mean_track_length": totals["mean_track_length"],
            "actions": totals["actions"],
        },
        "errors_by_reason": dict(sorted(errors.items())),
        "shards": sorted(shards, key=lambda s: s["name"]),
        "ledger": ledger_files,
    }
    if before_write:
        before_write()
    storage.write_bytes_atomic(
        storage.join(state.output, "manifest.json"), json.dumps(manifest, indent=2).encode(), state.options
    )
    return OutputState(state.output, manifest, ledger, state.options)


def _count_videos(ledger: pa.Table) -> int:
    lower = pc.utf8_lower(ledger["uri"])
    is_video = functools.reduce(pc.or_, [pc.ends_with(lower, ext) for ext in VIDEO_EXTENSIONS])
    return pc.count_distinct(ledger.filter(is_video)["source"]).as_py()


def remove_garbage(state: OutputState) -> int:
    """Delete shard and ledger files the manifest does not list (left by crashed or superseded runs).

    Only safe while holding the lease: a running writer's uncommitted shards are unlisted too.
    """
    live = state.live_files()
    removed = 0
    for folder, ours in OUR_FILES.items():
        fs, path = storage.filesystem(storage.join(state.output, folder), state.options)
        fs.invalidate_cache(path)
        if not fs.exists(path):
            continue
        for name in fs.find(path):
            relative = name[len(path.rstrip("/")) + 1 :]
            # only names this job writes: a file someone put beside ours is theirs
            if "/" not in relative and ours.fullmatch(relative) and f"{folder}/{relative}" not in live:
                fs.rm_file(name)
                removed += 1
    return removed


# what the job writes in each folder of an output (shards.py, write_ledger)
OUR_FILES = {
    "parquet": re.compile(r"part-[0-9a-f]{20}\.parquet"),
    "coco": re.compile(r"part-[0-9a-f]{20}\.json"),
    "ava": re.compile(r"part-[0-9a-f]{20}\.csv"),
    "ledger": re.compile(r"\d{6}-[0-9A-Za-z_-]{1,12}(-compact)?\.parquet"),
}


class ForeignOutputError(storage.StorageError):
    """An --output folder with files in it that no run of ours wrote."""


def claim_output(output: str, options=None) -> None:
    """Refuse an output that holds files that are not ours: a folder with no manifest or lease
    of ours may hold only what a run of ours writes before its first commit (shards, ledger
    files), else it is someone else's (or a typo) and nothing there is written or cleaned up."""
    from fashion_ray.lease import LEASE_NAME

    fs, path = storage.filesystem(output, options)
    fs.invalidate_cache(path)
    if any(
        fs.exists(storage.filesystem(storage.join(output, name), options)[1]) for name in ("manifest.json", LEASE_NAME)
    ):
        return
    if not (fs.exists(path) and fs.isdir(path)):
        return
    root = path.rstrip("/") + "/"
    foreign = []
    for name in fs.find(path, withdirs=False):
        folder, _, file = name[len(root) :].rpartition("/")
        if folder not in OUR_FILES or not OUR_FILES[folder].fullmatch(file):
            foreign.append(name[len(root) :])
    if foreign:
        raise ForeignOutputError(
            f"output {output!r} holds files that are not a fashion-ray output's ({', '.join(sorted(foreign)[:3])}"
            f"{', ...' if len(foreign) > 3 else ''}) and no manifest: refusing to write or clean up "
            "there (give an empty folder or a previous run's output)"
        )
