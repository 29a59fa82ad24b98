"""The cluster files users copy must stay valid: YAML parses, the job's flags parse and
make a valid configuration, runtime_env names only what the project depends on."""

from __future__ import annotations

import importlib.util
import os
import shlex

import yaml
from conftest import ROOT


def _label_corpus_module():
    spec = importlib.util.spec_from_file_location("label_corpus", os.path.join(ROOT, "jobs", "label_corpus.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rayjob_entrypoint_is_a_valid_label_corpus_command():
    job = yaml.safe_load(open(os.path.join(ROOT, "cluster", "rayjob-label-corpus.yaml")))
    assert job["kind"] == "RayJob" and job["spec"]["rayClusterSpec"]["rayVersion"] == "2.60.0"
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["python", "jobs/label_corpus.py"]
    module = _label_corpus_module()
    cfg = module.make_config(module.get_args_parser().parse_args(argv[2:]))
    assert cfg.inputs == ("s3://bucket/uploads/",) and cfg.resources["person"].device == "cuda"
    assert all(r.max_actors == 8 and r.num_gpus > 0 for r in cfg.resources.values())


def test_runtime_env_lists_project_dependencies():
    env = yaml.safe_load(open(os.path.join(ROOT, "cluster", "runtime_env.yaml")))
    pyproject = open(os.path.join(ROOT, "pyproject.toml")).read()
    for requirement in env["pip"]:
        assert f'"{requirement}"' in pyproject, requirement
