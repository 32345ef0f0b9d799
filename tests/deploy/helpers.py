"""Reading rendered manifests, evaluating NetworkPolicies, and running image commands locally."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from deploy.dockerfile import ROOT, Stage
from devstack.processes import Ports

Manifest = dict[str, Any]
COMPOSE = yaml.safe_load((ROOT / "deploy" / "compose" / "compose.yaml").read_text())


def objects(documents: list[Manifest], kind: str) -> dict[str, Manifest]:
    """Objects of one kind by name."""
    return {document["metadata"]["name"]: document for document in documents if document["kind"] == kind}


def containers(documents: list[Manifest]) -> Iterator[tuple[str, Manifest, Manifest]]:
    """(deployment name, pod spec, container) for every container of every Deployment."""
    for name, deployment in objects(documents, "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        for container in pod["containers"]:
            yield name, pod, container


def env_value(container: Manifest, name: str) -> Any:
    """A container's env entry `name`: its literal value, or its valueFrom."""
    for entry in container.get("env", []):
        if entry["name"] == name:
            return entry.get("value", entry.get("valueFrom"))
    raise KeyError(f"{container['name']} has no env {name}")


def port_number(container: Manifest, name: str) -> int:
    """The containerPort named `name`."""
    for port in container.get("ports", []):
        if port.get("name") == name:
            return int(port["containerPort"])
    raise KeyError(f"{container['name']} has no port named {name}")


def selects(selector: Manifest, labels: dict[str, str]) -> bool:
    """Whether a matchLabels selector (the only form these manifests use) selects `labels`."""
    assert set(selector) <= {"matchLabels"}, f"unsupported selector {selector}"
    return all(labels.get(key) == value for key, value in selector.get("matchLabels", {}).items())


@dataclass(frozen=True)
class Pod:
    """Enough of a pod to evaluate NetworkPolicies: namespace, labels, named ports."""

    namespace: str
    labels: dict[str, str]
    ports: dict[str, int]


def pods(documents: list[Manifest]) -> dict[str, Pod]:
    """The pod of every Deployment, by Deployment name."""
    result = {}
    for name, deployment in objects(documents, "Deployment").items():
        template = deployment["spec"]["template"]
        ports = {
            port["name"]: int(port["containerPort"])
            for container in template["spec"]["containers"]
            for port in container.get("ports", [])
        }
        result[name] = Pod(deployment["metadata"]["namespace"], template["metadata"]["labels"], ports)
    return result


def ingress_allowed(documents: list[Manifest], source: Pod, target: Pod, port: str) -> bool:
    """Kubernetes NetworkPolicy semantics for one connection to `target`'s named port."""
    number = target.ports[port]
    policies = [
        policy
        for policy in objects(documents, "NetworkPolicy").values()
        if policy["metadata"]["namespace"] == target.namespace
        and "Ingress" in policy["spec"].get("policyTypes", ["Ingress"])
        and selects(policy["spec"]["podSelector"], target.labels)
    ]
    if not policies:
        return True

    def peer_matches(peer: Manifest) -> bool:
        if "namespaceSelector" in peer:
            namespace_labels = {"kubernetes.io/metadata.name": source.namespace}
            if not selects(peer["namespaceSelector"], namespace_labels):
                return False
        elif source.namespace != target.namespace:
            return False
        return "podSelector" not in peer or selects(peer["podSelector"], source.labels)

    def port_matches(entry: Manifest) -> bool:
        wanted = entry["port"]
        return (target.ports.get(wanted) if isinstance(wanted, str) else wanted) == number

    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            peers_ok = "from" not in rule or any(peer_matches(peer) for peer in rule["from"])
            ports_ok = "ports" not in rule or any(port_matches(entry) for entry in rule["ports"])
            if peers_ok and ports_ok:
                return True
    return False


# --- running an image's command as a local process ---------------------------------------
def service_stages(all_stages: dict[str, Stage]) -> dict[str, Stage]:
    """The Python service targets: stages built on the shared runtime stage, with a command."""
    return {name: stage for name, stage in all_stages.items() if stage.base == "runtime" and stage.command}


def local_image_environment(stage: Stage, environment: dict[str, str], scratch: Path) -> dict[str, str]:
    """The stage's ENV with its WORKDIR mapped onto this checkout and /tmp onto `scratch`."""
    result = {}
    for name, value in stage.env.items():
        # /tmp first: the checkout itself may live under /tmp.
        value = re.sub(r"(?<![\w/])/tmp(?=/|$|:)", str(scratch), value)
        value = value.replace("$PATH", environment.get("PATH", ""))
        result[name] = re.sub(rf"(?<![\w/]){re.escape(stage.workdir)}(?=/|$|:)", str(ROOT), value)
    return result


def container_to_local_ports(ports: Ports) -> dict[int, int]:
    """Container port (the defaults the images use) → the free loopback port a test uses instead."""
    defaults = Ports()
    return {getattr(defaults, name): getattr(ports, name) for name in Ports.__dataclass_fields__}


def localise_ports(words: list[str], mapping: dict[int, int]) -> list[str]:
    """A command with every container port number replaced by its local stand-in."""
    pattern = re.compile(r"(?<!\d)(" + "|".join(str(port) for port in mapping) + r")(?!\d)")
    return [pattern.sub(lambda match: str(mapping[int(match.group(1))]), word) for word in words]


def compose_service_for(target: str) -> tuple[str, Manifest]:
    """The Compose service built from Dockerfile target `target`."""
    for name, service in COMPOSE["services"].items():
        if service.get("build", {}).get("target") == target:
            return name, service
    raise KeyError(f"no Compose service builds target {target}")
