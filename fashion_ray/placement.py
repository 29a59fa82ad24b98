"""The resource plan of a labelling run, checked against the cluster's nodes before it starts.

Ray waits forever for an actor no node can hold (unless an autoscaler adds one), which
looks like a hang. So the run first lists what every part asks for (actors per stage,
CPUs, GPUs and custom resources per actor; decode and write tasks) and checks it against
the nodes that are alive: each ask must fit on one node, and the model stages' minimum
actors must fit on the cluster together. A plan that cannot be placed is refused with the
numbers, unless the cluster autoscales (`--autoscaling`): then the missing nodes are what
the autoscaler is expected to add.

Where work ran is reported back: every row records the node of each step that handled it
(`ran_on`), and the summary counts rows per step and node.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass

from fashion_ray.config import LabelJobConfig, ServeConfig
from fashion_ray.errors import InputError


class PlacementError(InputError):
    """The plan cannot be placed on this cluster; the message has the numbers."""


@dataclass(frozen=True)
class Ask:
    """What one actor (or task) of a step asks Ray for."""

    step: str  # a model stage, or "decode" / "write"
    actors: tuple[int, int] | None  # (min, max) for actor pools; None for tasks
    num_cpus: float
    num_gpus: float = 0.0
    custom: tuple[tuple[str, float], ...] = ()

    def needs(self) -> dict[str, float]:
        return {"CPU": self.num_cpus, "GPU": self.num_gpus, **dict(self.custom)}

    def describe(self) -> str:
        count = (
            f"{self.actors[0]}-{self.actors[1]} actors"
            if self.actors and self.actors[0] != self.actors[1]
            else (f"{self.actors[0]} actor{'s' if self.actors[0] > 1 else ''}" if self.actors else "tasks")
        )
        asks = ", ".join(f"{v:g} {k}" for k, v in self.needs().items() if v)
        return f"{self.step:<9} {count:<12} {asks or 'nothing'} each"


# the share of a node-type resource one actor takes: any number of actors fit on a node
NODE_RESOURCE_SHARE = 0.001


def stage_remote_args(cfg: LabelJobConfig | ServeConfig, stage: str) -> dict:
    """Ray resource arguments of a model stage's actors: pipeline.py passes them to Ray Data,
    serving/app.py to Serve replicas, so a stage asks for the same in batch and served."""
    res = cfg.resources[stage]
    args = {"num_cpus": res.num_cpus, "num_gpus": res.num_gpus}
    if res.node_resource:
        args["resources"] = {res.node_resource: NODE_RESOURCE_SHARE}
    return args


def serve_deployment_options(cfg: ServeConfig, stage: str) -> dict:
    """Serve options of a stage deployment: the batch job's actor resources per replica, and
    its actor counts as replicas (min < max autoscales on queued requests)."""
    res = cfg.resources[stage]
    replicas = (
        {"num_replicas": res.min_actors}
        if res.min_actors == res.max_actors
        else {"autoscaling_config": {"min_replicas": res.min_actors, "max_replicas": res.max_actors}}
    )
    return {"ray_actor_options": stage_remote_args(cfg, stage), **replicas}


def task_remote_args(cfg: LabelJobConfig, num_cpus: float) -> dict:
    """Ray resource arguments of the CPU tasks (probe, decode, write, tracks)."""
    return {
        "num_cpus": num_cpus,
        **({"resources": {cfg.cpu_node_resource: NODE_RESOURCE_SHARE}} if cfg.cpu_node_resource else {}),
    }


def resource_plan(cfg: LabelJobConfig) -> list[Ask]:
    def ask(step: str, actors, remote: dict) -> Ask:
        return Ask(
            step, actors, remote["num_cpus"], remote.get("num_gpus", 0.0), tuple(remote.get("resources", {}).items())
        )

    return (
        [ask("decode", None, task_remote_args(cfg, cfg.decode_num_cpus))]
        + [
            ask(s, (cfg.resources[s].min_actors, cfg.resources[s].max_actors), stage_remote_args(cfg, s))
            for s in cfg.stages
        ]
        + [ask("write", None, task_remote_args(cfg, cfg.write_num_cpus))]
    )


def alive_nodes() -> list[dict]:
    """{"id", "resources"} of the cluster's alive nodes (a connected Ray)."""
    import ray

    return [{"id": n["NodeID"], "resources": n["Resources"]} for n in ray.nodes() if n["Alive"]]


def _fits(ask: Ask, free: dict[str, float]) -> int:
    """How many of this ask fit into these free resources."""
    counts = [math.floor(free.get(k, 0.0) / v + 1e-9) for k, v in ask.needs().items() if v > 0]
    return min(counts) if counts else 10**9


def problems(plan: list[Ask], nodes: list[dict]) -> list[str]:
    """Why the plan cannot be placed on these nodes (empty when it can)."""
    found = []
    for ask in plan:
        if not any(_fits(ask, n["resources"]) for n in nodes):
            largest = {k: max((n["resources"].get(k, 0.0) for n in nodes), default=0.0) for k in ask.needs()}
            found.append(
                f"{ask.step}: one {'actor' if ask.actors else 'task'} asks for "
                + ", ".join(f"{v:g} {k}" for k, v in ask.needs().items() if v)
                + "; no node has that (largest node: "
                + ", ".join(f"{largest[k]:g} {k}" for k, v in ask.needs().items() if v)
                + ")"
            )
    if found:
        return found
    # every stage's minimum actors at once (they all live for the whole run), first fit on nodes
    free = [dict(n["resources"]) for n in nodes]
    for ask in sorted((a for a in plan if a.actors), key=lambda a: -a.num_gpus):
        for _ in range(ask.actors[0]):
            node = next((f for f in free if _fits(ask, f)), None)
            if node is None:
                total = {k: sum(n["resources"].get(k, 0.0) for n in nodes) for k in ("CPU", "GPU")}
                need = {k: sum(a.needs()[k] * a.actors[0] for a in plan if a.actors) for k in ("CPU", "GPU")}
                return [
                    f"the stages' minimum actors do not fit together: they ask for {need['CPU']:g} CPU and "
                    f"{need['GPU']:g} GPU in all, the cluster has {total['CPU']:g} CPU and {total['GPU']:g} GPU "
                    f"({ask.step} is the first that does not fit)"
                ]
            for k, v in ask.needs().items():
                node[k] = node.get(k, 0.0) - v
    # decode and write tasks need a CPU slice left over on some node, or the pipeline starves
    for ask in plan:
        if not ask.actors and not any(_fits(ask, f) for f in free):
            return [
                f"{ask.step}: once the model stages' actors are placed, no node has {ask.num_cpus:g} CPU left "
                f"for a {ask.step} task (lower the stages' num_cpus or add a node)"
            ]
    return []


def local_paths(cfg: LabelJobConfig) -> list[str]:
    """The run's inputs, output and bundle given as local paths (built-in bundles ship with the
    package on every node, so they are not among them)."""
    from fashion_ray.models.bundle import builtin_bundles

    uris = [*cfg.inputs, cfg.output] + ([] if cfg.bundle in builtin_bundles() else [cfg.bundle])
    return [u for u in uris if "://" not in u or u.startswith("file://")]


def format_plan(plan: list[Ask], nodes: list[dict]) -> str:
    lines = ["resource plan (per actor or task):"] + [f"  {a.describe()}" for a in plan]
    lines.append(f"cluster: {len(nodes)} alive node(s)")
    for n in nodes:
        shown = {
            k: v
            for k, v in sorted(n["resources"].items())
            if not k.startswith(("node:", "memory", "object_store_memory", "accelerator_type"))
        }
        lines.append(f"  {n['id'][:8]}  " + ", ".join(f"{v:g} {k}" for k, v in shown.items()))
    return "\n".join(lines)


def check(cfg: LabelJobConfig, *, autoscaling: bool, say) -> None:
    """Print the plan; refuse one this cluster cannot place (a warning where it autoscales)."""
    plan, nodes = resource_plan(cfg), alive_nodes()
    say(format_plan(plan, nodes))
    local = local_paths(cfg)
    if local and sum(1 for n in nodes if n["resources"].get("CPU") or n["resources"].get("GPU")) > 1:
        say(
            f"warning: {', '.join(local)} are paths on this machine; every node reads its own disk there, so "
            "they must be on a filesystem all nodes share (or use s3:// / gs:// URIs)"
        )
    found = problems(plan, nodes)
    if found and autoscaling:
        say(
            "warning: not placeable on the nodes alive now; waiting for the autoscaler to add nodes:\n  "
            + "\n  ".join(found)
        )
    elif found:
        raise PlacementError(
            "this plan cannot be placed on the cluster:\n  "
            + "\n  ".join(found)
            + "\n(change the stages' resources with --set, add nodes, or pass --autoscaling "
            "if the cluster adds nodes on demand)"
        )


def ran_on_label(step: str) -> str:
    """This process's node, as a `ran_on` entry for a step."""
    import ray

    # outside Ray (a stage called directly in a test or a notebook) there is no node to name
    return f"{step}@{ray.get_runtime_context().get_node_id() if ray.is_initialized() else 'local'}"


def add_ran_on(ran_on, step: str) -> list[str]:
    """The rows' `ran_on` strings with this step, on this process's node, appended."""
    here = ran_on_label(step)
    return [f"{r};{here}" for r in ran_on]


def count_placement(ran_on: list[str]) -> dict[str, dict[str, int]]:
    """{step: {node id: rows}} from the rows' `ran_on` strings ("step@node;step@node")."""
    steps = [item.partition("@") for entry in ran_on for item in entry.split(";") if item]
    return merge_placement([{step: {node: 1}} for step, _, node in steps])


def merge_placement(records: list[dict]) -> dict[str, dict[str, int]]:
    """Sum {step: {node id: rows}} records."""
    out: dict[str, collections.Counter] = {}
    for record in records:
        for step, nodes in record.items():
            out.setdefault(step, collections.Counter()).update(nodes)
    return {step: dict(nodes) for step, nodes in out.items()}
