"""Reading rendered manifests, evaluating NetworkPolicies, and running image commands locally."""

from __future__ import annotations

import ipaddress
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from deploy.check import ENVOY, image_envoy_arguments
from deploy.dockerfile import ROOT, Stage, stages
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


def _port_matches(entry: Manifest, number: int, target: Pod | None, protocol: str) -> bool:
    if entry.get("protocol", "TCP") != protocol:
        return False
    wanted = entry.get("port")
    if wanted is None:
        return True
    if isinstance(wanted, str):  # a named port: resolved on the destination pod
        return target is not None and target.ports.get(wanted) == number
    return int(wanted) == number


def egress_allowed(
    documents: list[Manifest],
    source: Pod,
    port: int,
    *,
    target: Pod | None = None,
    ip: str | None = None,
    protocol: str = "TCP",
) -> bool:
    """Kubernetes NetworkPolicy semantics for one connection from `source` to a pod (`target`) or to an
    address outside the cluster (`ip`). ipBlocks are taken to match outside addresses only, as the
    Kubernetes documentation advises relying on."""
    policies = [
        policy
        for policy in objects(documents, "NetworkPolicy").values()
        if policy["metadata"]["namespace"] == source.namespace
        and "Egress" in policy["spec"].get("policyTypes", ["Ingress"])
        and selects(policy["spec"]["podSelector"], source.labels)
    ]
    if not policies:
        return True

    def peer_matches(peer: Manifest) -> bool:
        if "ipBlock" in peer:
            if ip is None:
                return False
            address = ipaddress.ip_address(ip)
            block = peer["ipBlock"]
            return address in ipaddress.ip_network(block["cidr"]) and not any(
                address in ipaddress.ip_network(excluded) for excluded in block.get("except", [])
            )
        if target is None:
            return False
        if "namespaceSelector" in peer:
            if not selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": target.namespace}):
                return False
        elif target.namespace != source.namespace:
            return False
        return "podSelector" not in peer or selects(peer["podSelector"], target.labels)

    for policy in policies:
        for rule in policy["spec"].get("egress", []):
            peers_ok = "to" not in rule or any(peer_matches(peer) for peer in rule["to"])
            ports_ok = "ports" not in rule or any(
                _port_matches(entry, port, target, protocol) for entry in rule["ports"]
            )
            if peers_ok and ports_ok:
                return True
    return False


# --- Envoy with the image's config --------------------------------------------------------
def render_image_envoy(out: Path, overrides: dict[str, str], extra: list[str] | None = None) -> None:
    """Render Envoy's config with the Dockerfile's arguments, `overrides` (option → value) replacing some of
    them and `extra` arguments appended: the image's edge, on local ports and the local descriptor."""
    arguments = image_envoy_arguments()
    for option, value in {"--out": str(out), "--descriptor": str(ROOT / "gateway" / "aitask.pb"), **overrides}.items():
        arguments[arguments.index(option) + 1] = value
    subprocess.run([sys.executable, "-m", "gateway.config", *arguments, *(extra or [])], cwd=ROOT, check=True)


def start_image_envoy(config: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """Envoy with the image's command line on `config`, output (access log included) to `log_path`."""
    command = stages()["envoy"].command
    assert command[:3] == ["envoy", "-c", "/etc/envoy/envoy.json"]
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [str(ENVOY), "-c", str(config), *command[3:]], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
