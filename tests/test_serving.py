"""The served cascade on the test session's Ray: HTTP API rows against the batch job's rows,
4xx reasons for bad input, batching under concurrency, the web page in headless Chromium,
and the Label Studio ML backend against a real Label Studio server."""

from __future__ import annotations

import base64
import concurrent.futures
import dataclasses
import io
import json
import os
import shutil
import subprocess
import time

import numpy as np
import pytest
import requests
import s3fs
from PIL import Image

from fashion_ray import storage
from fashion_ray.config import ConfigError
from fashion_ray.serving import label_studio
from fashion_ray.serving.app import serve_config
from helpers import ROOT, SAMPLE_CORPUS, bad_file_catalogue, free_port, job_main, read_rows, stop_process_group

PHOTOS = sorted(n for n in os.listdir(SAMPLE_CORPUS) if n.endswith(".jpg"))
MAX_BYTES = 1 << 20  # the test server's limit: every sample photo fits, a 1.5 MB body does not
BUCKET = "served-photos"
API_TOKEN = "served-cascade-test-token-51c7"  # the server's, from a file as a mounted Secret gives it
LABEL_STUDIO_TOKEN = "fashion-ray-test-token"  # the Label Studio admin's (label_studio_server)
API = requests.Session()  # a client that holds the API token; requests.* calls hold none
LABEL_STUDIO_DEADLINE_S = 15  # the test server answers a /predict within this (80 s by default)


def _photo(name: str) -> bytes:
    with open(os.path.join(SAMPLE_CORPUS, name), "rb") as f:
        return f.read()


@pytest.fixture(scope="module")
def label_studio_port():
    return free_port()


@pytest.fixture(scope="module")
def served(ray_session, s3_server, label_studio_port, tmp_path_factory):
    """The app as `serve run` builds it, on a free port, as a cluster runs it: an API token
    from a file, the Label Studio it reads task images from configured (it is started later,
    on that port, by label_studio_server); photos in a bucket it may read."""
    from ray import serve

    secrets = tmp_path_factory.mktemp("secrets")
    (secrets / "api-token").write_text(API_TOKEN + "\n")
    (secrets / "label-studio-token").write_text(LABEL_STUDIO_TOKEN)

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server}, skip_instance_cache=True)
    fs.mkdir(BUCKET)
    for name in PHOTOS:
        fs.pipe(f"{BUCKET}/{name}", _photo(name))
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    from fashion_ray.serving.app import build

    serve.run(
        build(
            {
                "max_bytes": str(MAX_BYTES),
                "allow_uris": f"s3://{BUCKET}/",
                "auth_token_file": str(secrets / "api-token"),
                "label_studio_url": f"http://127.0.0.1:{label_studio_port}",
                "label_studio_token_file": str(secrets / "label-studio-token"),
                "label_studio_max_tasks": "250",
                "label_studio_deadline_s": str(LABEL_STUDIO_DEADLINE_S),
            }
        ),
        name="fashion-ray",
        route_prefix="/",
    )
    API.headers["Authorization"] = f"Bearer {API_TOKEN}"
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


def _label(base: str, data: bytes, **params) -> requests.Response:
    return API.post(f"{base}/v1/label", data=data, params=params, headers={"Content-Type": "image/jpeg"}, timeout=120)


def test_served_rows_are_the_batch_jobs_rows(served, default_run):
    """Same photo, same bundle: the served row equals the Parquet row the labelling job wrote,
    for sample photos and for every file of the bad-file catalogue (same reasons)."""
    from fashion_ray.formats.schema import with_attribute_maps

    _, out, _ = default_run  # a garment's attributes map: pyarrow reads (name, value) pairs, JSON has an object
    batch = {os.path.basename(r["uri"]): r for r in with_attribute_maps(read_rows(out))}
    catalogue = bad_file_catalogue()
    for name in PHOTOS + sorted(catalogue):
        data = _photo(name) if name in PHOTOS else catalogue[name][0]
        answer = _label(served, data)
        row, expected = answer.json(), batch[name]
        assert row["status"] == expected["status"], (name, row)
        if expected["status"] == "error":
            assert answer.status_code in (413, 415, 422) and row["error"] == expected["error"], (name, row)
            continue
        assert answer.status_code == 200
        for key in ("width", "height", "bundle_name", "bundle_version", "stages", "persons"):
            assert row[key] == expected[key], (name, key)
        assert row["id"] == storage.stable_id(row["uri"]) and row["uri"] == f"upload:sha256:{row['etag']}"
    # the sample photos' 5 people, served and batch (their candidates under the threshold too)
    assert sum(p["confident"] for n in PHOTOS for p in batch[n]["persons"]) == 5


def test_uri_requests_read_only_allowed_prefixes(served):
    uri = f"s3://{BUCKET}/two_people.jpg"
    answer = API.post(f"{served}/v1/label", json={"uri": uri}, timeout=120)
    row = answer.json()
    assert answer.status_code == 200 and row["uri"] == uri and row["id"] == storage.stable_id(uri)
    assert row["persons"] == _label(served, _photo("two_people.jpg")).json()["persons"]
    for bad, status, reason in (
        (os.path.join(SAMPLE_CORPUS, "camera.jpg"), 403, "forbidden_uri"),
        ("s3://other-bucket/x.jpg", 403, "forbidden_uri"),
        (f"s3://{BUCKET}/missing.jpg", 422, "unreadable"),
    ):
        answer = API.post(f"{served}/v1/label", json={"uri": bad}, timeout=60)
        assert (answer.status_code, answer.json()["error"]) == (status, reason), bad
    answer = API.post(
        f"{served}/v1/label", data=b'{"url": 1}', headers={"Content-Type": "application/json"}, timeout=60
    )
    assert answer.status_code == 400 and "uri" in answer.json()["error_detail"]
    # Label Studio's routes refuse what is not their protocol with a reason, not a 500
    answer = API.post(
        f"{served}/label-studio/predict", data=b"not json", headers={"Content-Type": "application/json"}, timeout=60
    )
    assert answer.status_code == 400 and answer.json() == {"error": "the body is not a JSON object"}
    answer = API.post(f"{served}/label-studio/setup", json={"schema": "<View"}, timeout=60)
    assert answer.status_code == 400 and "not XML" in answer.json()["error"]
    config = API.get(f"{served}/label-studio/config.xml", timeout=60).text
    for tasks in (["not a task"], "tasks", 7, [{"id": 1}, None]):
        answer = API.post(f"{served}/label-studio/predict", json={"tasks": tasks, "label_config": config}, timeout=60)
        assert answer.status_code == 400 and answer.json() == {"error": "'tasks' must be a list of task objects"}, tasks


def test_oversized_requests_are_refused_before_decoding(served):
    big = _photo("camera.jpg") + b"\0" * (MAX_BYTES + 1)
    answer = _label(served, big)
    assert answer.status_code == 413 and answer.json()["error"] == "too_large"
    assert str(MAX_BYTES) in answer.json()["error_detail"]

    def chunks():  # no Content-Length: refused while streaming in
        for start in range(0, len(big), 1 << 16):
            yield big[start : start + (1 << 16)]

    answer = API.post(f"{served}/v1/label", data=chunks(), headers={"Content-Type": "image/jpeg"}, timeout=60)
    assert answer.status_code == 413 and answer.json()["error"] == "too_large"
    # and the replicas are alive: the next request is labelled
    assert _label(served, _photo("camera.jpg")).status_code == 200


def test_overlay_is_the_preview_drawing(served):
    from fashion_ray import preview

    row = _label(served, _photo("two_people.jpg"), overlay="true").json()
    overlay = np.asarray(Image.open(io.BytesIO(base64.b64decode(row.pop("overlay_png")))).convert("RGB"))
    photo = np.asarray(Image.open(io.BytesIO(_photo("two_people.jpg"))).convert("RGB"))
    assert overlay.shape == photo.shape == (row["height"], row["width"], 3)
    assert np.array_equal(overlay, np.asarray(preview.render(photo, row)))
    assert not np.array_equal(overlay, photo)


def test_concurrent_requests_are_batched_per_stage(served):
    from fashion_ray.bench.serving import server_timing

    sequential = {n: _label(served, _photo(n)).json()["persons"] for n in PHOTOS}
    names = PHOTOS * 4
    largest = []
    # on a loaded machine the Ingress can hand requests on slower than a stage serves them, and
    # then a round has no batch to share: another round of 8 concurrent clients is sent (each
    # round checked whole) until one does, up to 4 rounds
    while len(largest) < 4 and max(largest, default=1) == 1:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda n: _label(served, _photo(n)), names))
        assert [a.status_code for a in answers] == [200] * len(names)
        assert all(a.json()["persons"] == sequential[n] for n, a in zip(names, answers))
        timings = [server_timing(a.headers["Server-Timing"]) for a in answers]
        assert all(list(t) == ["decode", "person", "clothing", "parts", "actions"] for t in timings)
        batches = [t[stage][0] for t in timings for stage in ("person", "clothing", "parts")]
        assert all(1 <= b <= 4 for b in batches)  # the model stages' batch_size
        largest.append(max(batches))
    assert max(largest) > 1, largest  # concurrent requests shared batches


@pytest.mark.external
def test_web_page_in_headless_chromium(served, tmp_path):
    """The page as a person uses it: choose a photo, see the overlay, the table and the legend."""
    chromium, driver_path = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        pytest.skip("no Chromium/chromedriver installed (bash tests/install_test_tools.sh installs them)")
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    try:
        browser.get(served + "/")
        legend = [el.text for el in browser.find_elements(By.CSS_SELECTOR, "#legend .swatch")]
        assert legend == ["head", "torso", "upper_arm", "lower_arm", "upper_leg", "lower_leg"]
        expected = _label(served, _photo("two_people.jpg")).json()

        def choose(path) -> str:
            browser.execute_script("document.getElementById('status').dataset.state = 'idle';")
            browser.find_element(By.ID, "file").send_keys(str(path))
            WebDriverWait(browser, 120).until(
                lambda b: b.find_element(By.ID, "status").get_attribute("data-state") in ("done", "error")
            )
            return browser.find_element(By.ID, "status").get_attribute("data-state")

        # this server needs its token: the page says so, then works once it is entered
        assert choose(os.path.join(SAMPLE_CORPUS, "camera.jpg")) == "error"
        assert "API token" in browser.find_element(By.ID, "status").text
        browser.find_element(By.ID, "token").send_keys(API_TOKEN)
        assert choose(os.path.join(SAMPLE_CORPUS, "two_people.jpg")) == "done"
        size = browser.execute_script(
            "const i = document.getElementById('overlay'); return [i.naturalWidth, i.naturalHeight];"
        )
        assert size == [expected["width"], expected["height"]]
        rows = browser.find_elements(By.CSS_SELECTOR, "#found tbody tr")
        confident = [p for p in expected["persons"] if p["confident"]]  # candidates are counted, not listed
        assert len(rows) == len(confident) == 2
        for tr, person in zip(rows, confident):
            cells = [td.text for td in tr.find_elements(By.TAG_NAME, "td")]
            assert cells[0] == str(person["person_id"]) and cells[1] == f"{person['score']:.2f}"
            assert cells[3].split("; ") == [f"{g['category']} {g['score']:.2f}" for g in person["garments"]]
            assert cells[5] == ("; ".join(f"{a['action']} {a['score']:.2f}" for a in person["actions"]) or "-")
        assert "2 persons" in browser.find_element(By.ID, "status").text
        # the cameraman stands, legs in view: the actions column says so (the two above are waist-up)
        standing = _label(served, _photo("camera.jpg")).json()["persons"]
        assert choose(os.path.join(SAMPLE_CORPUS, "camera.jpg")) == "done"
        cells = [
            td.text for td in browser.find_element(By.CSS_SELECTOR, "#found tbody tr").find_elements(By.TAG_NAME, "td")
        ]
        assert standing[0]["actions"][0]["action"] == "stand" and cells[5].startswith("stand ")

        broken = tmp_path / "broken.jpg"
        broken.write_bytes(b"not a photo at all")
        assert choose(broken) == "error"
        assert "undecodable" in browser.find_element(By.ID, "status").text
    finally:
        browser.quit()


# --- Label Studio ---------------------------------------------------------------------


def _hand_made_row(status: str = "ok") -> dict:
    from fashion_ray import masks as rle

    torso = np.zeros((400, 200), bool)
    torso[100:200, 50:150] = True
    return {
        "width": 200,
        "height": 400,
        "status": status,
        "persons": [
            {
                "person_id": 0,
                "score": 0.9,
                "box": [10.0, 20.0, 110.0, 220.0],
                "mask": None,
                "garments": [
                    {
                        "garment_id": 0,
                        "category": "short_sleeve_top",
                        "score": 0.5,
                        "box": [20.0, 40.0, 60.0, 80.0],
                        "mask": None,
                    }
                ],
                "parts": [
                    {"part": "torso", "side": None, "box": [50.0, 100.0, 150.0, 200.0], "mask": rle.encode(torso)}
                ],
            }
        ],
    }


def test_label_studio_results_from_a_hand_made_row():
    targets = label_studio.parse_label_config(
        '<View><Image name="img" value="$photo"/>'
        '<RectangleLabels name="box" toName="img"><Label value="Person"/><Label value="Short-sleeve top"/><Label value="cat"/></RectangleLabels>'
        '<PolygonLabels name="poly" toName="img"><Label value="torso"/></PolygonLabels></View>'
    )
    [image] = targets.images
    assert (image.name, image.key) == ("img", "photo")
    assert image.controls[0].labels == {"person": "Person", "short_sleeve_top": "Short-sleeve top"}
    result = label_studio.prediction({"img": _hand_made_row()}, targets, "m@1")
    assert result["score"] == 0.9 and result["model_version"] == "m@1"
    by_id = {r["id"]: r for r in result["result"]}
    assert by_id["p0-box"]["value"] == {
        "x": 5.0,
        "y": 5.0,
        "width": 50.0,
        "height": 50.0,
        "rotation": 0,
        "rectanglelabels": ["Person"],
    }
    assert by_id["p0g0-box"]["value"]["rectanglelabels"] == ["Short-sleeve top"]
    assert by_id["p0g0-box"]["value"]["x"] == 10.0 and by_id["p0g0-box"]["value"]["height"] == 10.0
    polygon = by_id["p0torso-poly-0"]["value"]
    assert polygon["polygonlabels"] == ["torso"] and sorted(map(tuple, polygon["points"])) == [
        (25.0, 25.0),
        (25.0, 49.75),
        (74.5, 25.0),
        (74.5, 49.75),
    ]  # pixel corners (50,100)-(149,199) in percent
    assert set(by_id) == {"p0-box", "p0g0-box", "p0torso-poly-0"}
    # an image that could not be labelled: no prediction at all (Label Studio asks again later)
    assert label_studio.prediction({"img": _hand_made_row("error")}, targets, "m@1") is None


def test_label_studio_configs_beyond_our_own():
    """predicted_values label maps, model_score_threshold, brushes, a second Image, and configs
    with nothing to fill (accepted, with the reason)."""
    targets = label_studio.parse_label_config(
        '<View><Header value="Look"/><Image name="front" value="$front"/><Image name="back" value="$back"/>'
        '<RectangleLabels name="who" toName="back" model_score_threshold="0.6">'
        '<Label value="Human" predicted_values="person"/><Label value="Top" predicted_values="short_sleeve_top,long_sleeve_top"/>'
        '</RectangleLabels><BrushLabels name="paint" toName="back"><Label value="torso"/></BrushLabels></View>'
    )
    [back] = targets.images  # "front" has no control of ours: it is not labelled
    assert back.name == "back" and back.key == "back"
    who, paint = back.controls
    assert (
        who.labels == {"person": "Human", "short_sleeve_top": "Top", "long_sleeve_top": "Top"}
        and who.score_threshold == 0.6
    )
    result = label_studio.prediction({"back": _hand_made_row()}, targets, "m@1")["result"]
    assert [(r["from_name"], r["to_name"], r["type"]) for r in result] == [
        ("who", "back", "rectanglelabels"),
        ("paint", "back", "brushlabels"),
    ]  # the 0.5 top is under 0.6
    assert result[0]["value"]["rectanglelabels"] == ["Human"]
    brush = result[1]["value"]
    assert brush["format"] == "rle" and brush["brushlabels"] == ["torso"]
    decoded = _decode_brush(brush["rle"]).reshape(400, 200, 4)
    expected = np.zeros((400, 200), bool)
    expected[100:200, 50:150] = True
    assert np.array_equal(decoded[..., 3] == 255, expected) and np.array_equal(decoded[..., 0] == 255, expected)
    for empty in ("<View></View>", '<View><Image name="i" value="$i"/><Choices name="c" toName="i"/></View>'):
        assert label_studio.parse_label_config(empty).unserved and not label_studio.parse_label_config(empty).images
    with pytest.raises(label_studio.LabelConfigError, match="not XML"):
        label_studio.parse_label_config("<View>")


def _decode_brush(values: list[int]) -> np.ndarray:
    """Label Studio's brush RLE read bit by bit, as its converter's decode_rle reads it."""
    bits = "".join(f"{v:08b}" for v in values)
    at = 0

    def read(n):
        nonlocal at
        at += n
        return int(bits[at - n : at], 2)

    count, word = read(32), read(5) + 1
    sizes = [read(4) + 1 for _ in range(4)]
    out, i = np.zeros(count, np.uint8), 0
    while i < count:
        repeated = read(1)
        end = i + 1 + read(sizes[read(2)])
        if repeated:
            out[i:end] = read(word)
        else:
            for k in range(i, end):
                out[k] = read(word)
        i = end
    return out


def test_the_reference_backends_requests_are_answered(served):
    """What label-studio-ml-backend's own tests/test_api.py and test_basic.py send, replayed at
    /label-studio: health at / and /health, metrics, a single task with an empty config,
    setup with an empty config, training webhooks 201 and other events 200."""
    base = f"{served}/label-studio"
    for route in ("/", "/health"):
        answer = API.get(f"{base}{route}", timeout=60)
        assert answer.status_code == 200 and answer.json()["status"] == "UP"
    assert API.get(f"{base}/metrics", timeout=60).status_code == 200
    answer = API.post(
        f"{base}/predict",
        timeout=60,
        json={
            "tasks": {"id": 1},
            "label_config": "<View></View>",
            "project": "1.1000000000",
            "params": {"context": {}},
        },
    )
    assert answer.status_code == 200 and answer.json() == {"results": [[]]}
    answer = API.post(
        f"{base}/setup", timeout=60, json={"project": "1.1000000000", "schema": "<View></View>", "extra_params": {}}
    )
    assert answer.status_code == 200 and answer.json()["model_version"]
    hook = {"action": "ANNOTATION_CREATED", "project": {"id": 1, "label_config": "<View></View>"}}
    assert API.post(f"{base}/webhook", json=hook, timeout=60).status_code == 201
    assert API.post(f"{base}/webhook", json={**hook, "action": "PROJECT_UPDATED"}, timeout=60).json() == {
        "status": "Unknown event"
    }


def test_a_large_selection_is_answered_within_the_deadline(served):
    """More tasks than fit in the deadline: the answer comes in time with the tasks done so far
    (in order) and none for the rest, which a repeated request then asks for."""
    config = API.get(f"{served}/label-studio/config.xml", timeout=60).text
    # tasks that name objects in the bucket the server may read (a Label Studio with S3 storage)
    tasks = [{"id": k, "data": {"image": f"s3://{BUCKET}/two_people.jpg"}} for k in range(80)]  # ~30 s of work here
    started = time.perf_counter()
    answer = API.post(f"{served}/label-studio/predict", json={"tasks": tasks, "label_config": config}, timeout=120)
    elapsed = time.perf_counter() - started
    results = answer.json()["results"]
    assert answer.status_code == 200 and len(results) == 80 and elapsed < LABEL_STUDIO_DEADLINE_S + 8, elapsed
    done = [r for r in results if r]
    assert 0 < len(done) < 80 and all(r["model_version"] and r["result"] for r in done)


def test_label_studio_tasks_are_predicted_concurrently_and_unreadable_ones_get_none(served):
    """A mixed request as Label Studio sends it: tasks with data: URI photos (read), one whose
    image cannot be read (no prediction, so it is asked for again), in order. Label Studio asks
    again for what came back without a prediction, and so does this test: the stage deployments
    may still be busy with an earlier request's tasks (the deadline test's) on a loaded machine."""
    config = API.get(f"{served}/label-studio/config.xml", timeout=60).text
    photo = "data:image/jpeg;base64," + base64.b64encode(_photo("two_people.jpg")).decode()
    tasks = [{"id": k, "data": {"image": photo}} for k in range(4)]
    tasks.insert(
        2, {"id": 99, "data": {"image": "data:image/jpeg;base64," + base64.b64encode(b"not a photo").decode()}}
    )
    predicted = {}
    for _ in range(6):
        asked = [t for t in tasks if t["id"] not in predicted]
        answer = API.post(f"{served}/label-studio/predict", json={"tasks": asked, "label_config": config}, timeout=300)
        results = answer.json()["results"]
        assert answer.status_code == 200 and len(results) == len(asked)
        predicted |= {t["id"]: r for t, r in zip(asked, results) if r}
        assert 99 not in predicted  # the unreadable photo never gets one
        if len(predicted) == 4:
            break
    persons = [[r for r in predicted[k]["result"] if r["value"].get("rectanglelabels") == ["person"]] for k in range(4)]
    assert [len(p) for p in persons] == [2] * 4 and all(p == persons[0] for p in persons)


class _Recorder:
    """A real HTTP server on loopback that records every request it gets (path, Authorization)
    and answers each with `status` and `headers`: the host a hostile request names."""

    def __init__(self, status: int = 200, headers: dict | None = None):
        import http.server
        import threading

        seen = self.seen = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                seen.append((self.path, self.headers.get("Authorization")))
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_POST = do_GET

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def test_every_door_of_the_served_cascade_is_shut(served):
    """The security review's doors, tried on loopback: each answers 401/403/404/413/415 and the
    server labels the next photo as before."""
    config = API.get(f"{served}/label-studio/config.xml", timeout=60).text
    routes = [
        ("post", "/v1/label"),
        ("post", "/label-studio/predict"),
        ("post", "/label-studio/setup"),
        ("get", "/label-studio/health"),
        ("get", "/label-studio/"),
        ("get", "/label-studio/metrics"),
        ("get", "/label-studio/config.xml"),
        ("post", "/label-studio/webhook"),
    ]
    wrong = {"Authorization": "Bearer not-the-token"}
    basic_wrong = {"Authorization": "Basic " + base64.b64encode(b"label-studio:guess").decode()}
    for method, route in routes:
        for headers in ({}, wrong, basic_wrong):
            answer = getattr(requests, method)(f"{served}{route}", headers=headers, json={"schema": config}, timeout=60)
            assert answer.status_code == 401 and answer.json()["error"] == "unauthorized", (route, headers)
    basic = {"Authorization": "Basic " + base64.b64encode(f"label-studio:{API_TOKEN}".encode()).decode()}
    assert requests.get(f"{served}/label-studio/health", headers=basic, timeout=60).json()["status"] == "UP"
    assert requests.get(f"{served}/", timeout=60).status_code == 200  # the page itself holds nothing
    for route in ("/docs", "/openapi.json", "/v1/info"):  # off unless expose_info=true
        assert API.get(f"{served}{route}", timeout=60).status_code == 404, route

    # /setup cannot move the server's Label Studio: a hostile host named in it gets no request
    hostile = _Recorder()
    try:
        setup = {"project": "7.1", "schema": config, "hostname": hostile.url, "access_token": "stolen?"}
        answer = API.post(f"{served}/label-studio/setup", json=setup, timeout=60)
        assert answer.status_code == 200 and "model_version" in answer.json()
        tasks = [
            {"id": 1, "data": {"image": "/data/upload/1/x.jpg"}},
            {"id": 2, "data": {"image": f"{hostile.url}/x.jpg"}},
            {"id": 3, "data": {"image": "http://169.254.169.254/latest/meta-data/"}},
        ]
        answer = API.post(f"{served}/label-studio/predict", json={"tasks": tasks, "label_config": config}, timeout=120)
        assert answer.status_code == 200 and answer.json()["results"] == [[], [], []]  # none could be read
        assert hostile.seen == []
        for not_text in (5, ["<View/>"]):  # a labelling config that is not text: 400, not 500
            answer = API.post(
                f"{served}/label-studio/predict", json={"tasks": tasks, "label_config": not_text}, timeout=60
            )
            assert answer.status_code == 400 and "XML text" in answer.json()["error"], not_text
        # a web page's text/plain POST (no preflight) is not read
        answer = API.post(
            f"{served}/label-studio/setup", data=json.dumps(setup), headers={"Content-Type": "text/plain"}, timeout=60
        )
        assert answer.status_code == 415
    finally:
        hostile.close()

    # limits hold on chunked bodies too, and on the number of tasks
    def chunked(size):
        yield b'{"uri": "' + b"a" * size + b'"}'

    answer = API.post(
        f"{served}/v1/label", data=chunked(100_000), headers={"Content-Type": "application/json"}, timeout=60
    )
    assert answer.status_code == 413 and answer.json()["error"] == "too_large"
    answer = API.post(
        f"{served}/label-studio/predict",
        data=chunked(MAX_BYTES + 1),
        headers={"Content-Type": "application/json"},
        timeout=60,
    )
    assert answer.status_code == 413
    many = [{"id": k, "data": {"image": "/data/upload/x.jpg"}} for k in range(251)]
    answer = API.post(f"{served}/label-studio/predict", json={"tasks": many, "label_config": config}, timeout=60)
    assert answer.status_code == 413 and "label_studio_max_tasks" in answer.json()["error"]

    # what a client learns of objects it names is generic: no sizes, paths or storage errors
    for uri, status in ((f"s3://{BUCKET}/missing.jpg", 422), ("/etc/shadow", 403), (f"s3://{BUCKET}/../x.jpg", 403)):
        row = API.post(f"{served}/v1/label", json={"uri": uri}, timeout=60).json()
        assert row["error_detail"] in (
            "the object could not be read",
            "this server may not read that URI (only objects under its configured prefixes)",
        ), row
    assert _label(served, _photo("camera.jpg")).status_code == 200  # and the server is fine


def test_label_studio_redirects_to_other_hosts_are_not_followed():
    """The configured Label Studio's token never travels: a redirect off its host is refused."""
    elsewhere = _Recorder()
    studio = _Recorder(302, {"Location": f"{elsewhere.url}/stolen.jpg"})
    try:
        connection = label_studio.Connection(studio.url, "the-label-studio-token")
        with pytest.raises(label_studio.TaskImageError, match="another host"):
            label_studio.read_task_image("label_studio", f"{studio.url}/data/upload/1/x.jpg", connection, MAX_BYTES)
        assert studio.seen == [("/data/upload/1/x.jpg", "Token the-label-studio-token")] and elsewhere.seen == []
    finally:
        elsewhere.close()
        studio.close()


class _SlowStudio:
    """A real HTTP server standing in for a Label Studio host: /api/token/refresh hands out
    access tokens expiring `lifetime_s` from now (counted), and an image path sends `body`
    one byte every `trickle_s` seconds."""

    def __init__(self, body: bytes, trickle_s: float = 0.0, lifetime_s: float = 300):
        import http.server
        import threading

        studio = self
        self.refreshes, self.reads = 0, []

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                studio.refreshes += 1
                claims = (
                    base64.urlsafe_b64encode(json.dumps({"exp": time.time() + lifetime_s}).encode())
                    .decode()
                    .rstrip("=")
                )
                answer = json.dumps({"access": f"header.{claims}.signature{studio.refreshes}"}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def do_GET(self):
                studio.reads.append(self.headers.get("Authorization"))
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                for k in range(len(body)):
                    self.wfile.write(body[k : k + 1] if trickle_s else body[k:])
                    self.wfile.flush()
                    if not trickle_s:
                        break
                    time.sleep(trickle_s)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def test_a_trickling_label_studio_cannot_hold_a_reader():
    """A host that sends a byte every half second: the read ends at its total deadline."""
    studio = _SlowStudio(b"x" * 1000, trickle_s=0.5)
    try:
        start = time.perf_counter()
        with pytest.raises(label_studio.TaskImageError, match="within 2 s"):
            label_studio.read_task_image(
                "label_studio",
                f"{studio.url}/data/upload/1/x.jpg",
                label_studio.Connection(studio.url, "legacy-token"),
                MAX_BYTES,
                timeout_s=2,
            )
        assert time.perf_counter() - start < 4
    finally:
        studio.close()


def test_label_studio_access_tokens_are_refreshed_when_they_expire():
    """A personal access token is traded once for an access token used until it nears expiry."""
    for lifetime_s, refreshes in ((300, 1), (5, 3)):  # 5 s is inside the 30 s margin: refreshed every read
        studio = _SlowStudio(b"image bytes", lifetime_s=lifetime_s)
        try:
            connection = label_studio.Connection(studio.url, "personal.access.token")
            for _ in range(3):
                assert (
                    label_studio.read_task_image(
                        "label_studio", f"{studio.url}/data/upload/1/x.jpg", connection, MAX_BYTES
                    )
                    == b"image bytes"
                )
            assert studio.refreshes == refreshes
            assert studio.reads[0].startswith("Bearer header.") and len(set(studio.reads)) == refreshes
        finally:
            studio.close()


def test_label_studio_config_names_are_quoted_and_configs_are_text():
    import xml.etree.ElementTree as ET

    hostile = ('top"/><Image name="x" value="$evil', "a&b<c>")
    labels = [el.get("value") for el in ET.fromstring(label_studio.recommended_config(hostile)).iter("Label")]
    assert labels[1:3] == list(hostile)
    for config in (5, ["<View/>"], {"a": 1}):
        with pytest.raises(label_studio.LabelConfigError, match="XML text"):
            label_studio.parse_label_config(config)


def test_without_a_token_only_loopback_clients_are_served():
    from fashion_ray.serving import auth

    local = {"host": "127.0.0.1:8000"}
    assert auth.refusal("", local, "127.0.0.1") is None and auth.refusal("", {"host": "[::1]:8000"}, "::1") is None
    assert auth.refusal("", {"host": "localhost"}, "127.0.0.1") is None
    assert "loopback clients only" in auth.refusal("", local, "10.1.2.3")
    assert auth.refusal(
        "", local | {"authorization": "Bearer anything"}, None
    )  # no client address: not known to be loopback
    assert auth.refusal("", local, "127.0.0.6")  # a sidecar relaying another host's request
    # DNS rebinding: a page at http://rebind.example:8000/ whose name now resolves to 127.0.0.1
    assert "Host header" in auth.refusal("", {"host": "rebind.example:8000"}, "127.0.0.1")
    assert auth.refusal("", {"host": "localhost.rebind.example"}, "127.0.0.1")
    assert auth.refusal("", {}, "127.0.0.1")
    # uvicorn made 127.0.0.1 out of X-Forwarded-For (FORWARDED_ALLOW_IPS='*'): the header stays
    for header in ("x-forwarded-for", "forwarded", "x-real-ip"):
        assert "forwarded by a proxy" in auth.refusal("", local | {header: "127.0.0.1"}, "127.0.0.1")
    assert auth.refusal("s3cret", local, "127.0.0.1")  # with a token, loopback needs it too
    assert auth.refusal("s3cret", {"authorization": "Bearer s3cret"}, "10.1.2.3") is None
    assert (
        auth.refusal("s3cret", {"authorization": "Basic " + base64.b64encode(b"anyone:s3cret").decode()}, "10.1.2.3")
        is None
    )
    assert auth.refusal("s3cret", {"authorization": "Basic !!!"}, "10.1.2.3")
    # no token: Serve must listen on loopback, or the server does not start
    for host in ("127.0.0.1", "::1", "localhost"):
        auth.check_listening_address(host, "")
    for host in ("0.0.0.0", "10.1.2.3", "::"):
        with pytest.raises(auth.AuthConfigError, match="no API token"):
            auth.check_listening_address(host, "")
    auth.check_listening_address("0.0.0.0", "s3cret")


def test_decode_memory_is_shared_in_arrival_order():
    """The ingress's decode budget: shares from the image header, first come first served,
    never more than the budget held at once; one larger than it runs alone."""
    import asyncio

    from fashion_ray.bench.serving import palette_png
    from fashion_ray.serving.cascade import DECODE_BYTES_PER_PIXEL, MemoryBudget, decode_bytes

    assert decode_bytes(palette_png(8000)) == 8000 * 8000 * DECODE_BYTES_PER_PIXEL
    assert decode_bytes(b"not an image") == 0

    async def scenario():
        budget, log = MemoryBudget(100), []
        gates = {name: asyncio.Event() for name in "abcd"}

        async def request(name, amount):
            async with budget.hold(amount):
                log.append((name, budget.total - budget.free))
                await gates[name].wait()

        tasks = [asyncio.create_task(request(n, amount)) for n, amount in (("a", 60), ("b", 50), ("c", 30), ("d", 500))]
        await asyncio.sleep(0.05)
        assert log == [("a", 60)]  # b does not fit; c would, but waits its turn behind b
        gates["a"].set()
        await asyncio.sleep(0.05)
        assert log == [("a", 60), ("b", 50), ("c", 80)]
        gates["b"].set()
        await asyncio.sleep(0.05)
        assert log[-1] == ("c", 80)  # d needs the whole budget: it waits for c too
        gates["c"].set()
        await asyncio.sleep(0.05)
        assert log[-1] == ("d", 100)
        gates["d"].set()
        await asyncio.gather(*tasks)
        assert budget.free == 100 and budget.waiting == []

    asyncio.run(scenario())


def test_one_mapping_from_device_and_overrides_to_where_each_stage_runs():
    """--device and --set give the same resources in the job, the served app and the
    benchmarks, and what an actor gets (runs_on) keeps the device, AMP and threads."""
    from fashion_ray.config import GPU_STAGE, Device, stage_resources

    gpu = stage_resources("cuda", ["person.max_actors=2", "all.amp=false"])
    assert gpu["person"] == dataclasses.replace(GPU_STAGE, max_actors=2, amp=False)
    assert gpu["person"].runs_on == Device("cuda", amp=False, torch_threads=2)
    assert gpu["actions"].runs_on == Device("cpu", amp=False)  # the actions stage reads keypoints, on a CPU
    assert serve_config({"device": "cuda", "set": "person.max_actors=2,all.amp=false"}).resources == gpu
    assert stage_resources()["person"].runs_on == Device()
    with pytest.raises(ConfigError, match="device 'tpu' is not one of: cpu, cuda"):
        stage_resources("tpu")
    with pytest.raises(ConfigError, match="device 'tpu' is not one of: cpu, cuda"):
        Device("tpu")


def test_serve_arguments_are_checked():
    assert serve_config({"device": "cuda"}).resources["person"].num_gpus > 0
    assert serve_config({"set": "all.max_actors=3,parts.batch_size=2"}).resources["parts"].batch_size == 2
    with pytest.raises(ConfigError, match="valid: bundle, stages"):
        serve_config({"bundel": "x"})
    with pytest.raises(ConfigError, match="cpu, cuda"):
        serve_config({"device": "tpu"})
    with pytest.raises(ConfigError, match="max_queued_requests='many': not a number"):
        serve_config({"max_queued_requests": "many"})
    assert serve_config({"expose_info": "true"}).expose_info and not serve_config({}).expose_info
    assert serve_config({"decode_memory_mb": "512"}).decode_memory_mb == 512
    with pytest.raises(ConfigError, match="valid: person, clothing, parts"):
        serve_config({"stages": "person,shoes"})
    # the serving benchmark's flags go through the same checks: one line, before any Ray starts
    with pytest.raises(SystemExit, match=r"^error: unknown stages \['shoes'\] \(valid: person, clothing"):
        job_main("benchmark_serve", "--stages", "person,shoes")
    with pytest.raises(SystemExit, match="^error: bad override 'person.gpus=1'"):
        job_main("benchmark_serve", "--set", "person.gpus=1")


def _label_studio_command() -> list[str] | None:
    local = os.path.join(ROOT, ".venv-labelstudio", "bin", "label-studio")
    found = os.environ.get("LABEL_STUDIO_BIN") or (local if os.path.exists(local) else shutil.which("label-studio"))
    return [found] if found else None


@pytest.fixture(scope="module")
def label_studio_server(tmp_path_factory, label_studio_port):
    """A real Label Studio on the port the served app was told, with an admin whose API token
    the test (and the served app, from its token file) uses."""
    command = _label_studio_command()
    if command is None:
        pytest.skip(
            "Label Studio is not installed (bash tests/install_test_tools.sh installs it into .venv-labelstudio)"
        )
    data, port, token = tmp_path_factory.mktemp("label-studio"), label_studio_port, LABEL_STUDIO_TOKEN
    template = os.path.join(ROOT, ".venv-labelstudio", "template", "label_studio.sqlite3")
    if os.path.exists(template):  # migrated by install_test_tools.sh: half a minute saved
        shutil.copy(template, data / "label_studio.sqlite3")
    # Label Studio refuses ML backends and webhooks on loopback addresses unless told: this one is
    # on 127.0.0.1; and it asks PyPI for a newer version unless told not to
    env = {
        **os.environ,
        "ML_BLOCK_LOCAL_IP": "false",
        "SSRF_PROTECTION_ENABLED": "false",
        "LATEST_VERSION_CHECK": "false",
        "LABEL_STUDIO_BASE_DATA_DIR": str(data),
    }
    log = open(data / "server.log", "w")
    server = subprocess.Popen(
        [
            *command,
            "start",
            "--no-browser",
            "--port",
            str(port),
            "--data-dir",
            str(data / "db"),
            "--username",
            "admin@example.com",
            "--password",
            "fashion-ray-pw",
            "--user-token",
            token,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 240
    while True:
        assert server.poll() is None and time.time() < deadline, (data / "server.log").read_text()[-3000:]
        try:
            if requests.get(f"{base}/health", timeout=5).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        time.sleep(1)
    # Label Studio 1.2x disables legacy API tokens for new organisations; its ML backend /setup
    # still sends one, so the admin turns them on (Organization -> API token settings)
    enable = "from jwt_auth.models import JWTSettings; JWTSettings.objects.update(legacy_api_tokens_enabled=True)"
    subprocess.run(
        [*command, "shell", "--data-dir", str(data / "db")],
        input=enable,
        text=True,
        env=env,
        capture_output=True,
        check=True,
        timeout=120,
    )
    yield base, {"Authorization": f"Token {token}"}
    stop_process_group(server, log)


@pytest.mark.external
def test_label_studio_project_gets_the_cascades_predictions(served, label_studio_server):
    base, auth = label_studio_server
    config = API.get(f"{served}/label-studio/config.xml", timeout=30).text
    project = requests.post(
        f"{base}/api/projects",
        headers=auth,
        timeout=60,
        json={"title": "fashion-ray pre-annotation", "label_config": config},
    ).json()
    # without credentials the backend refuses Label Studio's health check, so it is not added
    refused = requests.post(
        f"{base}/api/ml",
        headers=auth,
        timeout=120,
        json={"url": f"{served}/label-studio", "project": project["id"], "title": "no auth"},
    )
    assert refused.status_code == 400, refused.text
    # Label Studio's "Basic Authentication" settings, the API token as the password
    backend = requests.post(
        f"{base}/api/ml",
        headers=auth,
        timeout=120,
        json={
            "url": f"{served}/label-studio",
            "project": project["id"],
            "title": "fashion-ray",
            "auth_method": "BASIC_AUTH",
            "basic_auth_user": "label-studio",
            "basic_auth_pass": API_TOKEN,
        },
    )
    assert backend.status_code == 201, backend.text
    with open(os.path.join(SAMPLE_CORPUS, "two_people.jpg"), "rb") as f:
        imported = requests.post(
            f"{base}/api/projects/{project['id']}/import",
            headers=auth,
            timeout=120,
            files={"file": ("two_people.jpg", f, "image/jpeg")},
        )
    assert imported.status_code == 201, imported.text
    action = requests.post(
        f"{base}/api/dm/actions",
        headers=auth,
        timeout=300,
        params={"id": "retrieve_tasks_predictions", "project": project["id"]},
        json={"selectedItems": {"all": True, "excluded": []}},
    )
    assert action.status_code == 200, action.text
    predictions = requests.get(
        f"{base}/api/predictions", headers=auth, params={"project": project["id"]}, timeout=60
    ).json()
    assert len(predictions) == 1
    prediction = predictions[0]
    row = _label(served, _photo("two_people.jpg")).json()
    assert prediction["model_version"] == f"{row['bundle_name']}@{row['bundle_version']}"
    boxes = [r for r in prediction["result"] if r["from_name"] == "boxes"]
    persons = [r for r in boxes if r["value"]["rectanglelabels"] == ["person"]]
    confident = [p for p in row["persons"] if p["confident"]]  # pre-annotations are the labels
    assert len(persons) == len(confident) == 2
    for region, person in zip(persons, confident):
        x0, y0, x1, y1 = person["box"]
        assert region["value"]["x"] == pytest.approx(x0 * 100 / row["width"])
        assert region["value"]["width"] == pytest.approx((x1 - x0) * 100 / row["width"])
        assert region["value"]["height"] == pytest.approx((y1 - y0) * 100 / row["height"])
    garments = sorted(r["value"]["rectanglelabels"][0] for r in boxes if r["value"]["rectanglelabels"] != ["person"])
    assert garments == sorted(g["category"] for p in row["persons"] for g in p["garments"])
    polygons = {r["value"]["polygonlabels"][0] for r in prediction["result"] if r["from_name"] == "masks"}
    assert polygons >= {p["part"] for person in row["persons"] for p in person["parts"]}


@pytest.mark.external
def test_label_studio_images_read_with_a_personal_access_token(label_studio_server):
    """Where legacy tokens stay off, LABEL_STUDIO_API_KEY holds a personal access token: the
    backend trades it for an access token and reads uploads with that."""
    base, auth = label_studio_server
    project = requests.post(
        f"{base}/api/projects",
        headers=auth,
        timeout=60,
        json={
            "title": "token check",
            "label_config": '<View><Image name="image" value="$image"/>'
            '<RectangleLabels name="boxes" toName="image"><Label value="person"/></RectangleLabels></View>',
        },
    ).json()
    with open(os.path.join(SAMPLE_CORPUS, "camera.jpg"), "rb") as f:
        requests.post(
            f"{base}/api/projects/{project['id']}/import",
            headers=auth,
            timeout=120,
            files={"file": ("camera.jpg", f, "image/jpeg")},
        ).raise_for_status()
    [task] = requests.get(f"{base}/api/tasks", headers=auth, params={"project": project["id"]}, timeout=60).json()[
        "tasks"
    ]
    targets = label_studio.parse_label_config(project["label_config"])
    token = requests.post(f"{base}/api/token/", headers=auth, timeout=60).json()["token"]
    connection = label_studio.Connection(base, token)
    kind, url = label_studio.task_image_source(task, targets.images[0], connection, ())
    assert kind == "label_studio" and url.startswith(base + "/data/upload/")
    assert label_studio.read_task_image(kind, url, connection, MAX_BYTES) == _photo("camera.jpg")
    with pytest.raises(label_studio.TaskImageError, match="exceeds the limit of 1000 bytes"):
        label_studio.read_task_image(kind, url, connection, 1000)
    with pytest.raises(label_studio.TaskImageError, match="neither in the configured Label Studio"):
        label_studio.task_image_source(
            {"data": {"image": "http://elsewhere.example/x.jpg"}}, targets.images[0], connection, ()
        )


@pytest.mark.external
def test_label_studio_project_connected_empty_then_given_a_brush_config(served, label_studio_server):
    """A new project's empty config is connected first (Label Studio's own order), the
    labelling config set afterwards with BrushLabels; a selection of 200 tasks retrieved at
    once, while other clients' photos are being labelled, gets 200 predictions, the brush
    strokes decode with Label Studio's own converter to the masks the cascade found, and the
    model stays Connected."""
    base, auth = label_studio_server
    project = requests.post(f"{base}/api/projects", headers=auth, timeout=60, json={"title": "empty first"}).json()
    backend = requests.post(
        f"{base}/api/ml",
        headers=auth,
        timeout=120,
        json={
            "url": f"{served}/label-studio",
            "project": project["id"],
            "title": "fashion-ray",
            "auth_method": "BASIC_AUTH",
            "basic_auth_user": "label-studio",
            "basic_auth_pass": API_TOKEN,
        },
    )
    assert backend.status_code == 201, backend.text
    config = (
        '<View><Image name="photo" value="$image"/>'
        '<RectangleLabels name="who" toName="photo"><Label value="Human" predicted_values="person"/></RectangleLabels>'
        '<BrushLabels name="paint" toName="photo"><Label value="torso"/><Label value="head"/></BrushLabels></View>'
    )
    patched = requests.patch(
        f"{base}/api/projects/{project['id']}", headers=auth, json={"label_config": config}, timeout=60
    )
    assert patched.status_code == 200, patched.text
    blank = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 200, 200)).save(blank, format="JPEG")
    imported = requests.post(
        f"{base}/api/projects/{project['id']}/import",
        headers=auth,
        timeout=300,
        files={"file": ("two_people.jpg", _photo("two_people.jpg"), "image/jpeg")},
    )
    assert imported.status_code == 201, imported.text
    # 199 more as JSON tasks (Label Studio takes at most 100 files in one upload), the photo inline
    blank_uri = "data:image/jpeg;base64," + base64.b64encode(blank.getvalue()).decode()
    imported = requests.post(
        f"{base}/api/projects/{project['id']}/import",
        headers=auth,
        timeout=300,
        json=[{"data": {"image": blank_uri}} for _ in range(199)],
    )
    assert imported.status_code == 201, imported.text
    # "Retrieve predictions" as a user repeats it: each answer comes within the deadline with
    # what is done; the next one asks only for the tasks still without a prediction
    stored = []
    with concurrent.futures.ThreadPoolExecutor(4) as others:  # the server is busy with other clients meanwhile
        busy = [others.submit(_label, served, _photo(name)) for name in PHOTOS]
        for _ in range(12):
            started = time.perf_counter()
            action = requests.post(
                f"{base}/api/dm/actions",
                headers=auth,
                timeout=300,
                params={"id": "retrieve_tasks_predictions", "project": project["id"]},
                json={"selectedItems": {"all": True, "excluded": []}},
            )
            assert action.status_code == 200, action.text
            assert time.perf_counter() - started < LABEL_STUDIO_DEADLINE_S + 30
            predictions = requests.get(
                f"{base}/api/predictions", headers=auth, params={"project": project["id"]}, timeout=60
            ).json()
            stored.append(len(predictions))
            if len(predictions) == 200:
                break
        assert [b.result().status_code for b in busy] == [200] * len(PHOTOS)
    assert stored[-1] == 200 and stored == sorted(stored), stored
    people = [p for p in predictions if p["result"]]
    [prediction] = people  # the blank photos: a prediction with no regions
    row = _label(served, _photo("two_people.jpg")).json()
    humans = [r for r in prediction["result"] if r["from_name"] == "who"]
    confident = [p for p in row["persons"] if p["confident"]]
    assert [r["value"]["rectanglelabels"] for r in humans] == [["Human"]] * len(confident) == [["Human"]] * 2
    strokes = [r for r in prediction["result"] if r["from_name"] == "paint"]
    parts = [(p, q) for p in row["persons"] for q in p["parts"] if q["part"] in ("torso", "head")]
    assert len(strokes) == len(parts) > 0
    decode = (
        "import json, sys, numpy as np; from label_studio_sdk.converter.brush import decode_rle; "
        "print(json.dumps([int(v) for v in decode_rle(json.loads(sys.stdin.read()))[3::4].nonzero()[0][:: 97]]))"
    )
    from fashion_ray import masks as rle

    python = os.path.join(os.path.dirname(_label_studio_command()[0]), "python")
    for stroke, (_, part) in zip(strokes, parts):
        sampled = subprocess.run(
            [python, "-c", decode],
            input=json.dumps(stroke["value"]["rle"]),
            text=True,
            capture_output=True,
            check=True,
            timeout=120,
        ).stdout
        assert json.loads(sampled) == rle.decode(part["mask"]).ravel().nonzero()[0][::97].tolist()
        assert stroke["value"]["brushlabels"] == [part["part"]]
    [state] = requests.get(f"{base}/api/ml", headers=auth, params={"project": project["id"]}, timeout=60).json()
    assert state["state"] == "CO", state  # still Connected
