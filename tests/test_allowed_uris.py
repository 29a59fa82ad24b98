"""Which URIs a server configured with `allow_uris` may read: resolved first, then checked on
whole path segments (the path traversal and prefix confusions of the security review); and
which URIs a manifest file names (read as lines or as CSV, never split on commas)."""

from __future__ import annotations

import os

import pytest

from fashion_ray import storage
from fashion_ray.serving.cascade import ServeConfig, check_uri


@pytest.mark.parametrize(
    "uri, allowed",
    [
        ("s3://bucket/uploads/a.jpg", True),
        ("s3://bucket/uploads/deep/er/a.jpg", True),
        ("s3://bucket/uploads-private/a.jpg", False),  # a longer name is another folder
        ("s3://bucket/uploads/../secrets/a.jpg", False),
        ("s3://bucket/uploads/%2e%2e/secrets/a.jpg", False),
        ("s3://bucket/uploads/./a.jpg", False),
        ("s3://other/uploads/a.jpg", False),
        ("gs://bucket/uploads/a.jpg", False),
        ("https://cdn.example.com/looks/a.jpg", True),
        ("https://cdn.example.com@127.0.0.1/looks/a.jpg", False),  # the host is 127.0.0.1
        ("https://cdn.example.com.evil.net/looks/a.jpg", False),
        ("https://cdn.example.com:8443/looks/a.jpg", False),
        ("http://cdn.example.com/looks/a.jpg", False),
        ("https://cdn.example.com/looks/a.jpg?redirect=http://169.254.169.254/", False),
    ],
)
def test_remote_uris_are_checked_on_whole_segments_of_the_same_host(uri, allowed):
    prefixes = ("s3://bucket/uploads", "https://cdn.example.com/looks/")
    assert (storage.allowed_uri(uri, prefixes) is not None) == allowed


def test_local_paths_are_resolved_before_the_check(tmp_path):
    allowed, outside = tmp_path / "uploads", tmp_path / "private"
    allowed.mkdir()
    outside.mkdir()
    (allowed / "a.jpg").write_bytes(b"x")
    (outside / "secret.jpg").write_bytes(b"y")
    os.symlink(outside / "secret.jpg", allowed / "link.jpg")
    (tmp_path / "uploads-old").mkdir()
    prefixes = (str(allowed),)
    assert storage.allowed_uri(str(allowed / "a.jpg"), prefixes) == str((allowed / "a.jpg").resolve())
    assert storage.allowed_uri(f"file://{allowed}/a.jpg", prefixes) is not None
    for hostile in (
        f"{allowed}/../private/secret.jpg",
        str(allowed / "link.jpg"),
        str(tmp_path / "uploads-old" / "a.jpg"),
        "/etc/shadow",
        f"{allowed}/../../../../etc/shadow",
        "s3://bucket/a.jpg",
    ):
        assert storage.allowed_uri(hostile, prefixes) is None, hostile
    # the server's answer names no size or path of what it refused
    cfg = ServeConfig(allow_uris=prefixes)
    request = check_uri(f"{allowed}/../private/secret.jpg", cfg)
    assert request.error == "forbidden_uri" and request.size == 0
    assert check_uri(str(allowed / "a.jpg"), cfg).status == "ok"


def test_manifest_files_keep_names_with_commas(tmp_path):
    for name in ("comma,name.jpg", "plain.jpg", "quoted, too.jpg"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "list.txt").write_text(f"# a comment\n{tmp_path}/comma,name.jpg\n\n{tmp_path}/plain.jpg\n")
    (tmp_path / "list.csv").write_text(f'uri,label\n"{tmp_path}/quoted, too.jpg",street\n{tmp_path}/plain.jpg,studio\n')
    txt = storage.list_inputs([str(tmp_path / "list.txt")]).column("uri").to_pylist()
    assert txt == [f"{tmp_path}/comma,name.jpg", f"{tmp_path}/plain.jpg"]
    csv_listed = storage.list_inputs([str(tmp_path / "list.csv")]).to_pylist()
    assert [r["uri"].rsplit("/", 1)[-1] for r in csv_listed] == ["quoted, too.jpg", "plain.jpg"]
    assert [r["size"] for r in csv_listed] == [1, 1]


def test_a_served_fetch_reads_no_more_than_the_limit_allows(tmp_path):
    from fashion_ray.serving.cascade import fetch

    photo = tmp_path / "grew.jpg"
    photo.write_bytes(b"x" * 100)
    cfg = ServeConfig(allow_uris=(str(tmp_path),), max_bytes=150)
    request = check_uri(str(photo), cfg)
    assert request.status == "ok" and request.size == 100
    photo.write_bytes(b"x" * 10_000)  # replaced after it was listed
    assert fetch(request, cfg) is None and request.error == "too_large"
    assert storage.fetch_bounded(str(photo), 150) == b"x" * 151


def test_web_prefixes_are_refused_at_start():
    from fashion_ray.config import ConfigError

    with pytest.raises(ConfigError, match=r"'https://cdn.example.com/looks'.*not http\(s\) URLs"):
        ServeConfig(allow_uris=("s3://bucket/uploads/", "https://cdn.example.com/looks"))


def test_a_fifo_is_refused_not_waited_on(tmp_path):
    """A FIFO (or device) under an allowed folder or in an input folder blocked its reader forever."""
    import threading

    from fashion_ray.serving.cascade import fetch

    fifo = tmp_path / "photo.jpg"
    os.mkfifo(fifo)
    (tmp_path / "clip.mp4").symlink_to(fifo)
    cfg = ServeConfig(allow_uris=(str(tmp_path),))
    answers = {}

    def read_all():
        request = check_uri(str(fifo), cfg)
        answers["served"] = request.status == "ok" and fetch(request, cfg), request.error
        answers["batch"] = storage.fetch_many([str(fifo)])[0]
        from fashion_ray import config
        from fashion_ray.video import decoding

        answers["video"] = decoding.probe(str(tmp_path / "clip.mp4"), config.VideoSampling())["error"]

    reader = threading.Thread(target=read_all, daemon=True)
    reader.start()
    reader.join(timeout=20)
    assert not reader.is_alive(), "a reader is stuck on the FIFO"
    assert answers["served"] == (None, "unreadable")
    assert isinstance(answers["batch"], storage.StorageError) and "not a regular file" in str(answers["batch"])
    assert answers["video"] in ("unreadable", "undecodable")
    skipped = {}
    listed = storage.list_inputs([str(tmp_path)], skipped=skipped)
    assert listed.num_rows == 0 and skipped == {"not_a_regular_file": 2}
