"""Offline checks of the deployment artefacts; nothing here touches the network.

    python -m deploy.check [kubernetes] [compose] [envoy]    (all three by default)
    python -m deploy.check render-envoy OUT                  write the image's Envoy config to OUT

- kubernetes: `kustomize build` of every overlay, each object validated strictly
  against the Kubernetes schemas that ship in the kubernetes-validate wheel (at
  the oldest and newest versions we support), custom resources (KEDA,
  prometheus-operator, Gateway API) against their CRDs' schemas in
  deploy/schemas/; a kind with no schema fails. PrometheusRules also pass
  `promtool check rules`, and the alerts their unit tests (`promtool test
  rules` on deploy/k8s/components/monitoring/alerts_test.yaml), where each
  alert must fire.
- compose: every Compose file against deploy/schemas/compose-spec.json.
- envoy: `envoy --mode validate` on the config the image renders (same
  arguments as the Dockerfile, only the descriptor path made local) and on the
  Kubernetes ConfigMap's copy, which must equal the image's.

deploy/check.sh runs this after installing kustomize; tests/deploy runs that.
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml
from kubernetes_validate.utils import SchemaNotFoundError, latest_version

from deploy.dockerfile import ROOT, stages

DEPLOY = ROOT / "deploy"
SCHEMAS = DEPLOY / "schemas"
KUSTOMIZE = ROOT / ".local" / "bin" / "kustomize"
ENVOY = Path(sys.executable).with_name("envoy")
LOCAL_DESCRIPTOR = ROOT / "gateway" / "aitask.pb"
OVERLAYS = sorted(path for path in (DEPLOY / "k8s" / "overlays").iterdir() if (path / "kustomization.yaml").exists())
COMPOSE_FILES = sorted((DEPLOY / "compose").glob("compose*.yaml"))
K8S_ENVOY_CONFIG = DEPLOY / "k8s" / "base" / "envoy" / "envoy.json"
# Native preStop `sleep` is on by default from 1.30; the newest is whatever the wheel ships.
KUBERNETES_VERSIONS = ("1.30", latest_version())
# Custom resources, each against its CRD's schema (deploy/schemas/README.md says where each came from).
CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): SCHEMAS / "keda-scaledobject-v1alpha1.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): SCHEMAS / "keda-triggerauthentication-v1alpha1.json",
    ("monitoring.coreos.com/v1", "PodMonitor"): SCHEMAS / "monitoring-podmonitor-v1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SCHEMAS / "monitoring-servicemonitor-v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): SCHEMAS / "monitoring-prometheusrule-v1.json",
    ("gateway.networking.k8s.io/v1", "Gateway"): SCHEMAS / "gateway-gateway-v1.json",
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): SCHEMAS / "gateway-httproute-v1.json",
    ("gateway.networking.k8s.io/v1", "GRPCRoute"): SCHEMAS / "gateway-grpcroute-v1.json",
}
PROMTOOL = "promtool"
# The alerts' PrometheusRule and its promtool unit tests (which read its groups from `<name>.rules.yaml`).
ALERTS_NAME = "aitask"
ALERT_TESTS = DEPLOY / "k8s" / "components" / "monitoring" / "alerts_test.yaml"


# --- Kubernetes -----------------------------------------------------------
def kustomize_build(directory: Path) -> list[dict[str, Any]]:
    """The objects `kustomize build directory` renders."""
    if not KUSTOMIZE.exists():
        raise SystemExit(f"{KUSTOMIZE} is missing: run `make tools-kustomize`")
    rendered = subprocess.run([str(KUSTOMIZE), "build", str(directory)], capture_output=True, text=True)
    if rendered.returncode != 0:
        raise RuntimeError(f"kustomize build {directory} failed:\n{rendered.stderr}")
    return [document for document in yaml.safe_load_all(rendered.stdout) if document]


def _crd_validator(path: Path) -> jsonschema.Draft202012Validator:
    schema = json.loads(path.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _scaled_object_rules(document: dict[str, Any]) -> list[str]:
    """The CEL rule of KEDA's CRD that JSON Schema cannot state."""
    if document.get("kind") != "ScaledObject":
        return []
    spec = document.get("spec", {})
    if spec.get("minReplicaCount", 0) > spec.get("maxReplicaCount", 100):
        return ["spec: minReplicaCount must be less than or equal to maxReplicaCount"]
    return []


def kubernetes_errors(documents: Iterable[dict[str, Any]], versions: Iterable[str] = KUBERNETES_VERSIONS) -> list[str]:
    """Why each object is invalid (empty when all are valid), strictly, with no schema fetched."""
    crd_validators = _crd_validators()
    errors: list[str] = []
    for document in documents:
        name = f"{document.get('kind')}/{document.get('metadata', {}).get('name')}"
        validator = crd_validators.get((str(document.get("apiVersion")), str(document.get("kind"))))
        if validator is not None:
            problems = [
                f"{'.'.join(map(str, error.path)) or '<root>'}: {error.message}"
                for error in validator.iter_errors(document)
            ]
            errors += [f"{name}: {problem}" for problem in problems + _scaled_object_rules(document)]
            continue
        for version in versions:
            try:
                kubernetes_validate.validate(document, version, strict=True)
            except SchemaNotFoundError as error:
                errors.append(f"{name}: no schema to validate it against: {error.message}")
                break
            except kubernetes_validate.ValidationError as error:
                path = ".".join(str(part) for part in error.path) or "<root>"
                errors.append(f"{name} (Kubernetes {version}): {path}: {error.message}")
    return errors


@functools.cache
def _crd_validators() -> dict[tuple[str, str], jsonschema.Draft202012Validator]:
    return {key: _crd_validator(path) for key, path in CRD_SCHEMAS.items()}


def prometheus_rule_errors(documents: Iterable[dict[str, Any]]) -> list[str]:
    """`promtool check rules` on every PrometheusRule's groups (PromQL that parses, valid durations), then
    `promtool test rules` on the alerts' unit tests, in which every alert must fire at least once."""
    rules = [document for document in documents if document.get("kind") == "PrometheusRule"]
    if not rules:
        return []
    if shutil.which(PROMTOOL) is None:
        return [f"{PROMTOOL} is missing: run `make tools-promtool`"]
    errors: list[str] = []
    with tempfile.TemporaryDirectory() as scratch:
        for document in rules:
            name = document["metadata"]["name"]
            path = Path(scratch) / f"{name}.rules.yaml"
            path.write_text(yaml.safe_dump({"groups": document["spec"]["groups"]}))
            errors += _promtool_errors(name, ["check", "rules", str(path)], scratch)
            if name == ALERTS_NAME:
                errors += _untested_alerts(document)
                shutil.copy(ALERT_TESTS, scratch)
                errors += _promtool_errors(name, ["test", "rules", ALERT_TESTS.name], scratch)
    return errors


def _promtool_errors(name: str, arguments: list[str], directory: str) -> list[str]:
    result = subprocess.run([PROMTOOL, *arguments], capture_output=True, text=True, cwd=directory)
    if result.returncode == 0:
        return []
    return [f"PrometheusRule/{name}: promtool {arguments[0]} {arguments[1]}: {(result.stdout + result.stderr).strip()}"]


def _untested_alerts(document: dict[str, Any]) -> list[str]:
    tests = yaml.safe_load(ALERT_TESTS.read_text())
    fired = {case["alertname"] for test in tests["tests"] for case in test["alert_rule_test"] if case["exp_alerts"]}
    alerts = {rule["alert"] for group in document["spec"]["groups"] for rule in group["rules"] if "alert" in rule}
    return [f"alert {alert}: no test in {ALERT_TESTS.name} shows it firing" for alert in sorted(alerts - fired)]


def check_kubernetes() -> list[str]:
    """Render and validate every overlay."""
    errors: list[str] = []
    for overlay in OVERLAYS:
        documents = kustomize_build(overlay)
        problems = kubernetes_errors(documents) + prometheus_rule_errors(documents)
        print(
            f"kubernetes: overlay {overlay.name}: {len(documents)} objects, {len(problems)} problems "
            f"(Kubernetes {', '.join(KUBERNETES_VERSIONS)})"
        )
        errors += [f"overlay {overlay.name}: {problem}" for problem in problems]
    return errors


# --- Compose --------------------------------------------------------------
def compose_errors(document: Any) -> list[str]:
    """Why a Compose document breaks the Compose specification's schema."""
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    errors = jsonschema.Draft7Validator(schema).iter_errors(document)
    return [f"{'.'.join(map(str, error.path)) or '<root>'}: {error.message}" for error in errors]


def check_compose() -> list[str]:
    """Validate every Compose file."""
    errors: list[str] = []
    for path in COMPOSE_FILES:
        problems = compose_errors(yaml.safe_load(path.read_text()))
        print(f"compose: {path.relative_to(ROOT)}: {len(problems)} problems")
        errors += [f"{path.name}: {problem}" for problem in problems]
    return errors


# --- Envoy ----------------------------------------------------------------
def image_envoy_arguments() -> list[str]:
    """The `python -m gateway.config` arguments of the Dockerfile's build stage."""
    for run in stages()["build"].runs:
        words = shlex.split(run)
        if "gateway.config" in words:
            return words[words.index("gateway.config") + 1 :]
    raise RuntimeError("the Dockerfile renders no Envoy config (no `-m gateway.config` RUN line)")


def _option(arguments: list[str], name: str) -> str:
    return arguments[arguments.index(name) + 1]


def render_image_envoy_config(out: Path, descriptor: str | None = None) -> None:
    """Render the config exactly as the image build does, into `out` (optionally another descriptor path)."""
    arguments = image_envoy_arguments()
    arguments[arguments.index("--out") + 1] = str(out)
    if descriptor is not None:
        arguments[arguments.index("--descriptor") + 1] = descriptor
    subprocess.run([sys.executable, "-m", "gateway.config", *arguments], cwd=ROOT, check=True)


def envoy_validate(config: Path) -> tuple[bool, str]:
    """Run `envoy --mode validate`; (whether it said OK, what it printed)."""
    result = subprocess.run(
        [str(ENVOY), "--mode", "validate", "-c", str(config), "--log-level", "warn", "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    return result.returncode == 0 and f"configuration '{config}' OK" in output, output


def _with_local_descriptor(config: dict[str, Any], descriptor: str) -> dict[str, Any]:
    text = json.dumps(config)
    image_descriptor = _option(image_envoy_arguments(), "--descriptor")
    return json.loads(text.replace(json.dumps(image_descriptor), json.dumps(descriptor)))


def check_envoy() -> list[str]:
    """Validate the image's config and the Kubernetes copy, and that they are the same."""
    if not LOCAL_DESCRIPTOR.exists():
        raise SystemExit(f"{LOCAL_DESCRIPTOR} is missing: run `make protos`")
    errors: list[str] = []
    with tempfile.TemporaryDirectory() as scratch:
        image_config = Path(scratch) / "image-envoy.json"
        render_image_envoy_config(image_config)
        if json.loads(image_config.read_text()) != json.loads(K8S_ENVOY_CONFIG.read_text()):
            drifted = os.path.relpath(K8S_ENVOY_CONFIG, ROOT)
            errors.append(f"{drifted} differs from the image's config: run `make deploy-envoy-config`")
        local = {
            "image": Path(scratch) / "image-local-descriptor.json",
            "kubernetes": Path(scratch) / "k8s-local-descriptor.json",
        }
        render_image_envoy_config(local["image"], str(LOCAL_DESCRIPTOR))
        local["kubernetes"].write_text(
            json.dumps(_with_local_descriptor(json.loads(K8S_ENVOY_CONFIG.read_text()), str(LOCAL_DESCRIPTOR)))
        )
        for label, path in local.items():
            ok, output = envoy_validate(path)
            print(f"envoy: {label} config: {'OK' if ok else 'INVALID'}")
            if not ok:
                errors.append(f"envoy rejects the {label} config:\n{output[-2000:]}")
    return errors


CHECKS: dict[str, Callable[[], list[str]]] = {
    "kubernetes": check_kubernetes,
    "compose": check_compose,
    "envoy": check_envoy,
}


def main(argv: list[str]) -> int:
    """Run the named checks (all by default); exit 1 if any found a problem."""
    if argv[:1] == ["render-envoy"] and len(argv) == 2:
        render_image_envoy_config(Path(argv[1]))
        return 0
    unknown = [name for name in argv if name not in CHECKS]
    if unknown:
        print(f"unknown check(s) {unknown}; choose from {sorted(CHECKS)}\n{__doc__}", file=sys.stderr)
        return 2
    errors: list[str] = []
    for name in argv or list(CHECKS):
        errors += CHECKS[name]()
    for error in errors:
        print(f"FAIL {error}", file=sys.stderr)
    print(f"deploy checks: {'FAILED' if errors else 'passed'} ({len(errors)} problems)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
