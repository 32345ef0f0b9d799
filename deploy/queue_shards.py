"""The kustomize component that runs one dispatcher Deployment per queue shard, each scaled by KEDA on its own shard.

    python -m deploy.queue_shards SHARDS [--cluster]    rewrite deploy/k8s/components/queue-shards/

With QUEUE_SHARDS=N (aitask_common/queue_shards.py) a dispatcher serving every shard scales on all of them at once,
so one hot shard adds workers to every shard. The component makes the base `dispatcher` serve shard 0 and adds
`dispatcher-shard-<k>` for each other shard: each Deployment sets QUEUE_SHARDS_SERVED to its shard, and each
ScaledObject counts only its shard's jobs (the `shard` label of aitask_queue_depth, and its shard's RQ lists).
`--cluster` makes the list triggers KEDA's `redis-cluster` ones, and gives every Deployment that reads REDIS_URL the
cluster's node URLs too (REDIS_CLUSTER_URLS, from the same Secret). The Deployments are copies
of the base's (read from deploy/k8s/base/dispatcher.yaml), their image taken from the base Deployment's as the
overlay rendered it, so `images:` and pinned digests carry over. tests/deploy checks the committed component is
what this writes.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Any

import yaml
from redis import Redis

from aitask_common.queue_shards import QueueShards, configured
from aitask_common.queues import QUEUE_ORDER
from aitask_common.rq_shards import shard_queue
from deploy.dockerfile import ROOT

BASE = ROOT / "deploy" / "k8s" / "base" / "dispatcher.yaml"
COMPONENT = ROOT / "deploy" / "k8s" / "components" / "queue-shards"
SHARD_LABEL = "aitask/queue-shard"
HEADER = "# Written by `python -m deploy.queue_shards {args}` (deploy/queue_shards.py): edit that, not this.\n"
CLUSTER_AUTH = "dispatcher-redis-cluster"
IMAGE_PATH = "spec.template.spec.containers.[name=dispatcher].image"


def redis_deployments() -> list[str]:
    """The base's Deployments whose container reads REDIS_URL: on a Redis Cluster, each needs REDIS_CLUSTER_URLS."""
    names = []
    for path in sorted(BASE.parent.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document and document.get("kind") == "Deployment":
                (container,) = document["spec"]["template"]["spec"]["containers"]
                if any(entry["name"] == "REDIS_URL" for entry in container.get("env", [])):
                    names.append(document["metadata"]["name"])
    return names


def cluster_urls_patch(count: int) -> dict[str, Any]:
    """A patch adding REDIS_CLUSTER_URLS (Secret `aitask-datastores`) to every Deployment that reads REDIS_URL, the
    shards' dispatchers included."""
    names = [*redis_deployments(), *(shard_name(shard) for shard in range(1, count))]
    variable = {
        "name": "REDIS_CLUSTER_URLS",
        "valueFrom": {"secretKeyRef": {"name": "aitask-datastores", "key": "REDIS_CLUSTER_URLS"}},
    }
    operation = [{"op": "add", "path": "/spec/template/spec/containers/0/env/-", "value": variable}]
    return {
        "target": {"kind": "Deployment", "name": f"^({'|'.join(names)})$"},
        "patch": json.dumps(operation),
    }


def shard_name(shard: int) -> str:
    return "dispatcher" if shard == 0 else f"dispatcher-shard-{shard}"


def base_objects() -> dict[str, dict[str, Any]]:
    """The base's dispatcher objects, by kind."""
    return {document["kind"]: document for document in yaml.safe_load_all(BASE.read_text()) if document}


def list_names(shards: QueueShards, shard: int) -> list[str]:
    """The RQ lists of a shard's queues, as the code that enqueues names them (the client never connects)."""
    with configured(shards):
        return [shard_queue(Redis(), str(priority), shard).key for priority in QUEUE_ORDER]


def deployment(base: dict[str, Any], shard: int) -> dict[str, Any]:
    """The base Deployment serving `shard` only (its pods keep the base's labels, plus the shard's)."""
    document = copy.deepcopy(base)
    document["metadata"]["name"] = shard_name(shard)
    document["spec"]["selector"]["matchLabels"][SHARD_LABEL] = str(shard)
    document["spec"]["template"]["metadata"]["labels"][SHARD_LABEL] = str(shard)
    container = document["spec"]["template"]["spec"]["containers"][0]
    container["env"].insert(0, {"name": "QUEUE_SHARDS_SERVED", "value": str(shard)})
    return document


def scaled_object(base: dict[str, Any], shards: QueueShards, shard: int, cluster: bool) -> dict[str, Any]:
    """The base ScaledObject, counting the shard's jobs only."""
    document = copy.deepcopy(base)
    document["metadata"]["name"] = shard_name(shard)
    document["spec"]["scaleTargetRef"]["name"] = shard_name(shard)
    lists = iter(list_names(shards, shard))
    for trigger in document["spec"]["triggers"]:
        metadata = trigger["metadata"]
        if trigger["type"] == "prometheus":
            job = '{job="dispatcher", '
            metadata["query"] = metadata["query"].replace(job, f'{job}shard="{shard}", ')
        elif trigger["type"] == "redis":
            metadata["listName"] = next(lists)
            if cluster:
                trigger["type"] = "redis-cluster"
                trigger["authenticationRef"]["name"] = CLUSTER_AUTH
                metadata.pop("databaseIndex", None)
    return document


def budget(base: dict[str, Any], shard: int) -> dict[str, Any]:
    document = copy.deepcopy(base)
    document["metadata"]["name"] = shard_name(shard)
    document["spec"]["selector"]["matchLabels"][SHARD_LABEL] = str(shard)
    return document


def cluster_authentication() -> dict[str, Any]:
    """KEDA's redis-cluster scaler reads every node's address (host:port, comma-separated) and the password."""
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "TriggerAuthentication",
        "metadata": {"name": CLUSTER_AUTH},
        "spec": {
            "secretTargetRef": [
                {"parameter": "addresses", "name": "aitask-datastores", "key": "REDIS_CLUSTER_ADDRESSES"},
                {"parameter": "password", "name": "aitask-datastores", "key": "REDIS_PASSWORD"},
            ]
        },
    }


def component(count: int, cluster: bool) -> dict[str, str]:
    """File name -> text of the component for `count` shards."""
    if count < 2:
        raise SystemExit("one shard needs no component: the base dispatcher serves it")
    shards = QueueShards.layout(count, cluster=cluster)
    base = base_objects()
    added: list[dict[str, Any]] = []
    for shard in range(1, count):
        added += [deployment(base["Deployment"], shard), scaled_object(base["ScaledObject"], shards, shard, cluster)]
        added.append(budget(base["PodDisruptionBudget"], shard))
    if cluster:
        added.append(cluster_authentication())
    # The base objects become shard 0's: merged over them, these keep everything else they say (shard-0.yaml).
    zero = deployment(base["Deployment"], 0)
    served = zero["spec"]["template"]["spec"]["containers"][0]["env"][0]  # QUEUE_SHARDS_SERVED=0
    patches = [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "dispatcher"},
            "spec": {
                "selector": zero["spec"]["selector"],
                "template": {
                    "metadata": {"labels": zero["spec"]["template"]["metadata"]["labels"]},
                    "spec": {"containers": [{"name": "dispatcher", "env": [served]}]},
                },
            },
        },
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": "dispatcher"},
            "spec": budget(base["PodDisruptionBudget"], 0)["spec"],
        },
    ]
    # A ScaledObject's triggers are a list without merge keys: replaced whole.
    zero_scaled = scaled_object(base["ScaledObject"], shards, 0, cluster)
    patches.append({**zero_scaled, "spec": {"triggers": zero_scaled["spec"]["triggers"]}})
    args = f"{count}{' --cluster' if cluster else ''}"
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1alpha1",
        "kind": "Component",
        "resources": ["shards.yaml"],
        # What the base gives every object of its own.
        "labels": [{"pairs": {"app.kubernetes.io/part-of": "aitask"}, "includeTemplates": True}],
        "configMapGenerator": [{"name": "aitask-config", "behavior": "merge", "literals": [f"QUEUE_SHARDS={count}"]}],
        "patches": [{"path": "shard-0.yaml"}, *([cluster_urls_patch(count)] if cluster else [])],
        # Each shard's dispatcher runs the image the overlay gave the base's (its name, tag and digest).
        "replacements": [
            {
                "source": {"kind": "Deployment", "name": "dispatcher", "fieldPath": IMAGE_PATH},
                "targets": [
                    {
                        "select": {"kind": "Deployment", "name": shard_name(shard)},
                        "fieldPaths": [IMAGE_PATH],
                    }
                    for shard in range(1, count)
                ],
            }
        ],
    }
    intro = (
        f"# {count} queue shards{' on a Redis Cluster' if cluster else ''}: the base dispatcher serves shard 0,\n"
        "# dispatcher-shard-<k> shard k, each scaled by KEDA on its own shard's jobs (deploy/README.md).\n"
    )
    return {
        "kustomization.yaml": HEADER.format(args=args) + intro + yaml.safe_dump(kustomization, sort_keys=False),
        "shards.yaml": HEADER.format(args=args) + yaml.safe_dump_all(added, sort_keys=False),
        "shard-0.yaml": HEADER.format(args=args)
        + "# Merged over the base's dispatcher objects, which become shard 0's.\n"
        + yaml.safe_dump_all(patches, sort_keys=False),
    }


def write(directory: Path, files: dict[str, str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("shards", type=int, help="QUEUE_SHARDS")
    parser.add_argument("--cluster", action="store_true", help="KEDA's redis-cluster triggers (REDIS_CLUSTER_URLS)")
    arguments = parser.parse_args()
    write(COMPONENT, component(arguments.shards, arguments.cluster))
    print(f"wrote {COMPONENT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
