"""The cluster files users copy must stay valid: YAML parses, the job's flags parse and
make a valid configuration, runtime_env names only what the project depends on."""

from __future__ import annotations

import importlib.util
import json
import os
import shlex

import yaml

from helpers import ROOT, documented_commands


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
    assert all(r.max_actors == 8 for r in cfg.resources.values())
    # the model stages on GPUs; the actions stage reads keypoints and stays on a sliver of CPU
    assert (
        all(cfg.resources[s].num_gpus > 0 for s in ("person", "clothing", "parts"))
        and cfg.resources["actions"].num_gpus == 0
    )


def test_runtime_env_lists_project_dependencies():
    env = yaml.safe_load(open(os.path.join(ROOT, "cluster", "runtime_env.yaml")))
    pyproject = open(os.path.join(ROOT, "pyproject.toml")).read()
    for requirement in env["pip"]:
        # GPU nodes take onnxruntime's CUDA build of the same requirement
        assert f'"{requirement.replace("onnxruntime-gpu", "onnxruntime")}"' in pyproject, requirement


def test_hourly_rayjob_runs_the_readme_incremental_command():
    docs = list(yaml.safe_load_all(open(os.path.join(ROOT, "cluster", "cronjob-auto-label.yaml"))))
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"ServiceAccount", "Role", "RoleBinding", "ConfigMap", "CronJob"}
    cron = kinds["CronJob"]["spec"]
    assert cron["schedule"] == "0 * * * *" and cron["concurrencyPolicy"] == "Forbid"
    pod = cron["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == kinds["ServiceAccount"]["metadata"]["name"]
    assert pod["volumes"][0]["configMap"]["name"] == kinds["ConfigMap"]["metadata"]["name"]
    job = yaml.safe_load(kinds["ConfigMap"]["data"]["rayjob.yaml"])
    assert job["kind"] == "RayJob" and job["spec"]["rayClusterSpec"]["rayVersion"] == "2.60.0"
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[1:] in [a for _, a in documented_commands() if "--incremental" in a]  # the command the docs show
    module = _label_corpus_module()
    cfg = module.make_config(module.get_args_parser().parse_args(argv[2:]))
    assert cfg.incremental and cfg.output == "s3://bucket/labels/"

    crontab = [
        line for line in open(os.path.join(ROOT, "cluster", "crontab")) if line.strip() and not line.startswith("#")
    ]
    [entry] = crontab
    assert entry.split()[:5] == ["0", "*", "*", "*", "*"]
    assert "--runtime-env" not in entry  # an hourly run installs nothing: unpinned pip lines stay out
    assert shlex.split(entry.split(" -- ", 1)[1].split(">>")[0]) == argv


def test_raycluster_and_launcher_autoscale_gpu_workers():
    cluster = yaml.safe_load(open(os.path.join(ROOT, "cluster", "raycluster.yaml")))
    assert cluster["kind"] == "RayCluster" and cluster["spec"]["enableInTreeAutoscaling"] is True
    gpu = next(g for g in cluster["spec"]["workerGroupSpecs"] if g["groupName"] == "gpu")
    assert gpu["minReplicas"] == 0 < gpu["maxReplicas"]
    assert gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    launcher = yaml.safe_load(open(os.path.join(ROOT, "cluster", "cluster-launcher.yaml")))
    assert launcher["head_node_type"] in launcher["available_node_types"]
    workers = launcher["available_node_types"]["gpu_worker"]
    assert workers["min_workers"] == 0 < workers["max_workers"] <= launcher["max_workers"]


def test_node_type_resources_agree_across_cluster_files():
    """The node-type resources stages pin to (--set STAGE.node_resource, --cpu-node-resource)
    are declared alike by the launcher and KubeRay; test_cluster.py runs on the launcher's."""
    launcher = yaml.safe_load(open(os.path.join(ROOT, "cluster", "cluster-launcher.yaml")))["available_node_types"]
    kuberay = yaml.safe_load(open(os.path.join(ROOT, "cluster", "raycluster.yaml")))["spec"]["workerGroupSpecs"]
    declared = {g["groupName"]: json.loads(json.loads(g["rayStartParams"]["resources"])) for g in kuberay}
    assert declared == {"gpu": {"gpu_node": 1}, "cpu": {"cpu_node": 1}}
    assert {k: v for k, v in launcher["gpu_worker"]["resources"].items() if k != "GPU"} == declared["gpu"]
    assert launcher["cpu_worker"]["resources"] == declared["cpu"] and launcher["gpu_worker"]["resources"]["GPU"] == 1


def test_serve_config_and_rayservice_deploy_the_served_cascade():
    from ray.serve.schema import ServeDeploySchema

    from fashion_ray.placement import serve_deployment_options
    from fashion_ray.serving.app import build, serve_config

    config = yaml.safe_load(open(os.path.join(ROOT, "cluster", "serve.yaml")))
    ServeDeploySchema.parse_obj(config)  # what `serve deploy` validates
    [app] = config["applications"]
    assert app["import_path"] == "fashion_ray.serving.app:build"
    build(app["args"])  # the builder takes the file's args
    cfg = serve_config(app["args"])
    assert cfg.allow_uris == ("s3://bucket/uploads/",)
    person = serve_deployment_options(cfg, "person")
    assert person["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4}
    assert person["ray_actor_options"]["num_gpus"] > 0 and "gpu_node" in person["ray_actor_options"]["resources"]

    service = yaml.safe_load(open(os.path.join(ROOT, "cluster", "rayservice-cascade.yaml")))
    assert service["kind"] == "RayService" and service["spec"]["rayClusterConfig"]["rayVersion"] == "2.60.0"
    assert yaml.safe_load(service["spec"]["serveConfigV2"]) == config
    [gpu] = service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert json.loads(json.loads(gpu["rayStartParams"]["resources"])) == {"gpu_node": 1}


def _ray_pod_specs():
    """(file, pod spec) of every Ray node and job submitter the Kubernetes files start."""

    def load(name):
        return list(yaml.safe_load_all(open(os.path.join(ROOT, "cluster", name))))

    clusters = [
        ("raycluster.yaml", load("raycluster.yaml")[0]["spec"]),
        ("rayservice-cascade.yaml", load("rayservice-cascade.yaml")[0]["spec"]["rayClusterConfig"]),
    ]
    jobs = [("rayjob-label-corpus.yaml", load("rayjob-label-corpus.yaml")[0]["spec"])]
    config_map = next(d for d in load("cronjob-auto-label.yaml") if d["kind"] == "ConfigMap")
    jobs.append(("cronjob-auto-label.yaml", yaml.safe_load(config_map["data"]["rayjob.yaml"])["spec"]))
    clusters += [(name, job["rayClusterSpec"]) for name, job in jobs]
    pods = [(name, spec["headGroupSpec"]["template"]["spec"]) for name, spec in clusters]
    pods += [(name, group["template"]["spec"]) for name, spec in clusters for group in spec["workerGroupSpecs"]]
    pods += [(name, job["submitterPodTemplate"]["spec"]) for name, job in jobs]
    return pods


def test_every_ray_node_and_submitter_runs_with_ray_token_auth_from_a_secret():
    pods = _ray_pod_specs()
    assert len(pods) == 11  # 4 heads, 5 worker groups, 2 job submitters
    for name, pod in pods:
        for container in pod["containers"]:
            env = {e["name"]: e for e in container.get("env", [])}
            assert env.get("RAY_AUTH_MODE", {}).get("value") == "token", (name, container["name"])
            # the token comes from a Secret, never written into the file (or a runtime_env Ray logs)
            assert "value" not in env["RAY_AUTH_TOKEN"] and env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"], name
    for name in ("runtime_env.yaml",):
        assert "RAY_AUTH_TOKEN" not in open(os.path.join(ROOT, "cluster", name)).read()
    launcher = yaml.safe_load(open(os.path.join(ROOT, "cluster", "cluster-launcher.yaml")))
    starts = [
        c for c in launcher["head_start_ray_commands"] + launcher["worker_start_ray_commands"] if "ray start" in c
    ]
    assert len(starts) == 2 and all(c.startswith("RAY_AUTH_MODE=token ray start") for c in starts)
    assert "~/.ray/auth_token" in launcher["file_mounts"]
    cron = [line for line in open(os.path.join(ROOT, "cluster", "crontab")) if not line.startswith("#")]
    assert cron and all("RAY_AUTH_MODE=token" in line for line in cron if "ray job submit" in line)


def test_served_cascade_on_a_cluster_needs_its_api_token_and_bounds_its_queue():
    """Bound to 0.0.0.0 on a cluster: the API token from a file (a mounted Secret), never an
    env var; requests time out before Label Studio's 100 s; the ingress queue is bounded."""
    from fashion_ray.serving.app import serve_config

    config = yaml.safe_load(open(os.path.join(ROOT, "cluster", "serve.yaml")))
    assert config["http_options"]["host"] == "0.0.0.0" and config["http_options"]["request_timeout_s"] <= 100
    [app] = config["applications"]
    cfg = serve_config(app["args"])
    assert cfg.auth_token_file == "/etc/fashion-ray/api-token" and not cfg.expose_info
    assert not {k for k in app.get("runtime_env", {}).get("env_vars", {}) if "TOKEN" in k or "KEY" in k}
    for name, cluster in (("rayservice-cascade.yaml", "rayClusterConfig"), ("raycluster.yaml", None)):
        # the RayCluster too: `serve deploy cluster/serve.yaml` onto it needs the file on every node
        spec = yaml.safe_load(open(os.path.join(ROOT, "cluster", name)))["spec"]
        spec = spec[cluster] if cluster else spec
        pods = [spec["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in spec["workerGroupSpecs"]]
        for pod in pods:  # the ingress may land on any node: each has the Secret where auth_token_file points
            [volume] = [v for v in pod["volumes"] if v["name"] == "api-token"]
            assert volume["secret"]["secretName"] == "fashion-ray-api-token"
            assert volume["secret"]["defaultMode"] == 0o440, name  # not world-readable
            mounts = {
                m["mountPath"]: m
                for c in pod["containers"]
                for m in c.get("volumeMounts", [])
                if m["name"] == "api-token"
            }
            assert mounts["/etc/fashion-ray"]["readOnly"] is True
    launcher = yaml.safe_load(open(os.path.join(ROOT, "cluster", "cluster-launcher.yaml")))
    assert "~/.fashion-ray/api-token" in launcher["file_mounts"]
    [install] = [c for c in launcher["setup_commands"] if "/etc/fashion-ray/api-token" in c]
    mode = shlex.split(install)[shlex.split(install).index("-m") + 1]
    assert mode == "0400" and '-o "$(id -un)"' in install  # the Ray user's alone (it was 0444)


def test_every_pod_runs_unprivileged_and_only_autoscaling_heads_hold_a_service_account_token():
    pods = _ray_pod_specs()
    kubectl = next(
        d
        for d in yaml.safe_load_all(open(os.path.join(ROOT, "cluster", "cronjob-auto-label.yaml")))
        if d["kind"] == "CronJob"
    )["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    for name, pod in pods + [("cronjob-auto-label.yaml", kubectl)]:
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True and context["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for container in pod["containers"]:
            assert container["securityContext"] == {
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"]},
            }
        autoscaling_head = pod["containers"][0]["name"] == "ray-head" and name != "rayjob-label-corpus.yaml"
        if pod is not kubectl and not autoscaling_head:
            assert pod["automountServiceAccountToken"] is False, (name, pod["containers"][0]["name"])


def test_hourly_and_one_shot_jobs_run_a_pinned_commit_and_pinned_images():
    import re

    def images(node):
        if isinstance(node, dict):
            return [v for k, v in node.items() if k == "image"] + [i for v in node.values() for i in images(v)]
        return [i for v in node for i in images(v)] if isinstance(node, list) else []

    config_map = next(
        d
        for d in yaml.safe_load_all(open(os.path.join(ROOT, "cluster", "cronjob-auto-label.yaml")))
        if d["kind"] == "ConfigMap"
    )
    hourly = yaml.safe_load(config_map["data"]["rayjob.yaml"])
    one_shot = yaml.safe_load(open(os.path.join(ROOT, "cluster", "rayjob-label-corpus.yaml")))
    for job in (hourly, one_shot):
        working_dir = yaml.safe_load(job["spec"]["runtimeEnvYAML"])["working_dir"]
        assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+/archive/[0-9a-f]{40}\.zip", working_dir), working_dir
    everything = list(yaml.safe_load_all(open(os.path.join(ROOT, "cluster", "cronjob-auto-label.yaml")))) + [
        hourly,
        one_shot,
    ]
    found = images(everything)
    assert len(found) >= 7 and all(re.search(r"@sha256:[0-9a-f]{64}$", i) for i in found), found
