"""The README and docs cannot go stale: the README's first hour runs as written, and every
job command the README and docs show parses with the job's own flags."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from helpers import DOC_FILES, ROOT, code_lines, documented_commands


def _first_hour() -> list[str]:
    """The commands of the README's "The first hour" block, in order."""
    text = open(os.path.join(ROOT, "README.md")).read()
    section = text.split("## The first hour", 1)[1].split("\n## ", 1)[0]
    block = section.split("\n\n    ", 1)[1].split("\n\n", 1)[0]
    return code_lines("    " + block)


def _parser(script: str):
    spec = importlib.util.spec_from_file_location(f"doc_{os.path.basename(script)[:-3]}", os.path.join(ROOT, script))
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, os.path.dirname(spec.origin))  # tests/hostile_files.py imports its neighbours
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(os.path.dirname(spec.origin))
    return module.get_args_parser()


def test_every_documented_job_command_parses():
    """Each `python jobs/...` line of README.md and docs/*.md, with the flags it shows, is accepted
    by that job's parser (a renamed or removed flag fails here, naming the file and line)."""
    commands = documented_commands()
    assert len(commands) > 60 and {name for name, _ in commands} >= {
        "README.md",
        "docs/labelling.md",
        "docs/training.md",
    }
    parsers = {}
    for name, argv in commands:
        script = argv[0]
        assert os.path.exists(os.path.join(ROOT, script)), (name, script)
        parsers.setdefault(script, _parser(script))
        try:
            parsers[script].parse_args(argv[1:])
        except SystemExit as stop:  # --help exits 0
            if stop.code:
                pytest.fail(f"{name}: {' '.join(argv)} does not parse")


def test_readme_fits_on_a_screen_and_links_every_doc():
    readme = open(os.path.join(ROOT, "README.md")).read()
    assert len(readme.splitlines()) <= 250
    for name in DOC_FILES[1:]:
        assert f"({name})" in readme, name


@pytest.mark.external
def test_the_first_hour_runs_as_written(tmp_path):
    """The README's first-hour block, line by line, in a fresh folder (the job scripts linked in
    as a clone has them): labels, preview, the shards read by pyarrow and DuckDB, a synthetic
    set labelled and evaluated with its pictures, exports to Label Studio and FiftyOne."""
    commands = _first_hour()
    assert commands[0].startswith("python jobs/label_corpus.py  ") and any("--format fiftyone" in c for c in commands)
    os.symlink(os.path.join(ROOT, "jobs"), tmp_path / "jobs")
    home = tmp_path / "home"
    env = {
        **{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
        "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
        "HOME": str(home),
        "FIFTYONE_DATABASE_DIR": str(home / "fiftyone-db"),
        "FIFTYONE_DATABASE_VALIDATION": "false",
        "FIFTYONE_DO_NOT_TRACK": "true",
        "FIFTYONE_SHOW_PROGRESS_BARS": "false",
    }
    printed = []
    for command in commands:
        ran = subprocess.run(
            ["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )
        assert ran.returncode == 0, f"{command}\n{ran.stderr[-3000:]}"
        printed.append(ran.stdout)
    out = tmp_path / "out"
    manifest = json.loads((out / "labels" / "manifest.json").read_text())
    assert manifest["counts"]["inputs"] == 4 and (out / "labels" / "preview" / "index.html").exists()
    garments_by_photo = dict(eval(printed[2]))  # the pyarrow line prints [(photo, [garment, ...]), ...]
    assert set(garments_by_photo) == {"astronaut.jpg", "camera.jpg", "grace_hopper.jpg", "two_people.jpg"}
    assert sum(len(g) for g in garments_by_photo.values()) == manifest["counts"]["garments"]
    assert "astronaut.jpg" in printed[3]  # DuckDB read the same shards
    evaluation = out / "synth-labels" / "eval"
    assert (evaluation / "evaluation.md").exists() and (evaluation / "worst.html").exists()
    assert "person" in (evaluation / "evaluation.md").read_text()
    assert len(json.loads((out / "ls" / "tasks.json").read_text())) == 4
    assert '"samples": 4' in printed[-1].replace("'", '"') or "4 samples" in printed[-1], printed[-1]
