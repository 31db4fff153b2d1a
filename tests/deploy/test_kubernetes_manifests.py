"""Kubernetes and KServe manifests, checked statically (no cluster runs here).

Every kustomization renders with `kubectl kustomize`; every rendered Kubernetes object validates
strictly against the schemas of Kubernetes ``K8S_VERSION`` (kubernetes-validate); the KServe
InferenceServices are checked against the fields KServe's API declares (``KSERVE_SCHEMA``,
written from kserve's pkg/apis/serving/v1beta1: predictor.go, component.go,
predictor_model.go), their pod and container parts against Kubernetes' own schemas.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.conftest import REPO_ROOT
from tests.deploy.conftest import run_tool

#: the Kubernetes version the manifests are validated against (kubectl here is 1.32)
K8S_VERSION = "1.32.0"
K8S_DIR = REPO_ROOT / "deploy" / "k8s"
KUSTOMIZATIONS = {
    "base": K8S_DIR / "base",
    "single": K8S_DIR / "overlays" / "single",
    "production": K8S_DIR / "overlays" / "production",
    "kserve": REPO_ROOT / "deploy" / "kserve",
}
KSERVE_API = "serving.kserve.io/v1beta1"

# --- the fields KServe's v1beta1 API declares ------------------------------------------------
#: corev1.PodSpec fields, inlined into PredictorSpec (they are validated by Kubernetes' schema)
POD_SPEC_FIELDS = [
    "volumes", "initContainers", "containers", "ephemeralContainers", "restartPolicy",
    "terminationGracePeriodSeconds", "activeDeadlineSeconds", "dnsPolicy", "nodeSelector",
    "serviceAccountName", "serviceAccount", "automountServiceAccountToken", "nodeName",
    "hostNetwork", "hostPID", "hostIPC", "shareProcessNamespace", "securityContext",
    "imagePullSecrets", "hostname", "subdomain", "affinity", "schedulerName", "tolerations",
    "hostAliases", "priorityClassName", "priority", "dnsConfig", "readinessGates",
    "runtimeClassName", "enableServiceLinks", "preemptionPolicy", "overhead",
    "topologySpreadConstraints", "setHostnameAsFQDN", "os", "hostUsers", "schedulingGates",
    "resourceClaims",
]  # fmt: skip
#: ComponentExtensionSpec (component.go)
COMPONENT_EXTENSION = {
    "minReplicas": {"type": "integer", "minimum": 0},
    "maxReplicas": {"type": "integer", "minimum": 0},
    "scaleTarget": {"type": "integer"},
    "scaleMetric": {"enum": ["cpu", "memory", "concurrency", "rps"]},
    "containerConcurrency": {"type": "integer", "minimum": 0},
    "timeout": {"type": "integer"},
    "canaryTrafficPercent": {"type": "integer", "minimum": 0, "maximum": 100},
    "logger": {"type": "object"},
    "batcher": {"type": "object"},
    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
    "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    "deploymentStrategy": {"type": "object"},
}
#: corev1.Container fields, inlined into PredictorExtensionSpec
CONTAINER_FIELDS = [
    "name", "image", "command", "args", "workingDir", "ports", "envFrom", "env", "resources",
    "resizePolicy", "restartPolicy", "volumeMounts", "volumeDevices", "livenessProbe",
    "readinessProbe", "startupProbe", "lifecycle", "terminationMessagePath",
    "terminationMessagePolicy", "imagePullPolicy", "securityContext", "stdin", "stdinOnce",
    "tty",
]  # fmt: skip
FRAMEWORKS = [
    "sklearn", "xgboost", "tensorflow", "pytorch", "triton", "onnx", "huggingface", "pmml",
    "lightgbm", "paddle",
]  # fmt: skip
#: ModelSpec = modelFormat + runtime + PredictorExtensionSpec (predictor_model.go, predictor.go)
MODEL_SPEC = {
    "type": "object",
    "required": ["modelFormat"],
    "additionalProperties": False,
    "properties": {
        "modelFormat": {
            "type": "object",
            "required": ["name"],
            "additionalProperties": False,
            "properties": {"name": {"type": "string"}, "version": {"type": "string"}},
        },
        "runtime": {"type": "string"},
        "storageUri": {"type": "string", "minLength": 1},
        "runtimeVersion": {"type": "string"},
        "protocolVersion": {"enum": ["v1", "v2", "grpc-v1", "grpc-v2"]},
        "storage": {"type": "object"},
        **{name: {} for name in CONTAINER_FIELDS},
    },
}
KSERVE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": KSERVE_API},
        "kind": {"const": "InferenceService"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            # KServe's own name rule (InvalidISVCNameFormatError)
            "properties": {"name": {"type": "string", "pattern": "^[a-z]([-a-z0-9]*[a-z0-9])?$"}},
        },
        "spec": {
            "type": "object",
            "required": ["predictor"],
            "additionalProperties": False,
            "properties": {
                "predictor": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        **{name: {"type": "object"} for name in FRAMEWORKS},
                        "model": MODEL_SPEC,
                        "storageUris": {"type": "array", "minItems": 1},
                        "workerSpec": {"type": "object"},
                        **{name: {} for name in POD_SPEC_FIELDS},
                        **COMPONENT_EXTENSION,
                    },
                    # "exactly one of" a framework, a model, or a custom container
                    "oneOf": [
                        {"required": ["model"]},
                        {"required": ["containers"]},
                        *({"required": [name]} for name in FRAMEWORKS),
                    ],
                },
                "transformer": {"type": "object"},
                "explainer": {"type": "object"},
            },
        },
    },
}


def _render(kustomization: Path, kubectl: str) -> list[dict[str, Any]]:
    result = run_tool([kubectl, "kustomize", str(kustomization)], timeout=60)
    assert result.returncode == 0, result.stderr
    objects = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    assert objects, f"{kustomization} rendered nothing"
    return objects


@pytest.fixture(scope="module")
def rendered(require_tool: Callable[[str], str]) -> dict[str, list[dict[str, Any]]]:
    kubectl = require_tool("kubectl")
    return {name: _render(path, kubectl) for name, path in KUSTOMIZATIONS.items()}


def _kinds(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {obj["kind"]: obj for obj in objects}


@pytest.mark.parametrize("name", ["base", "single", "production"])
def test_every_object_validates_against_kubernetes(
    rendered: dict[str, list[dict[str, Any]]], name: str
) -> None:
    for obj in rendered[name]:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


@pytest.mark.parametrize("name", ["base", "single", "production"])
def test_deployment_is_probed_limited_and_unprivileged(
    rendered: dict[str, list[dict[str, Any]]], name: str
) -> None:
    deployment = _kinds(rendered[name])["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    [container] = pod["containers"]
    assert container["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    models = next(m for m in container["volumeMounts"] if m["mountPath"] == "/models")
    assert models["readOnly"] is True
    volume = next(v for v in pod["volumes"] if v["name"] == models["name"])
    assert volume["persistentVolumeClaim"]["claimName"] == "mnist-models"
    config = next(e["configMapRef"]["name"] for e in container["envFrom"])
    assert config in {o["metadata"]["name"] for o in rendered[name] if o["kind"] == "ConfigMap"}


def test_overlays_set_replicas_autoscaling_and_disruption_budget(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    single, production = _kinds(rendered["single"]), _kinds(rendered["production"])
    assert single["Deployment"]["spec"]["replicas"] == 1
    assert "HorizontalPodAutoscaler" not in single and "PodDisruptionBudget" not in single
    assert production["Deployment"]["spec"]["replicas"] == 3
    assert production["HorizontalPodAutoscaler"]["spec"]["minReplicas"] == 3
    assert production["PodDisruptionBudget"]["spec"] == {
        "minAvailable": 2,
        "selector": production["PodDisruptionBudget"]["spec"]["selector"],
    }
    image = production["Deployment"]["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "registry.example.com/mnist-service:0.1.0"
    assert {o["metadata"].get("namespace") for o in rendered["production"]} - {None} == {"mnist"}
    service = _kinds(rendered["base"])["Service"]
    selector = _kinds(rendered["base"])["Deployment"]["spec"]["selector"]["matchLabels"]
    assert service["spec"]["selector"] == selector


def _pod_of(predictor: dict[str, Any]) -> dict[str, Any]:
    """The Kubernetes Pod a predictor's inline PodSpec fields describe."""
    spec = {k: copy.deepcopy(v) for k, v in predictor.items() if k in POD_SPEC_FIELDS}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "predictor"}, "spec": spec}


def test_kserve_objects_use_only_the_fields_kserve_declares(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    services = {o["metadata"]["name"]: o for o in rendered["kserve"]}
    assert set(services) == {"mnist", "mnist-triton"}
    for obj in services.values():
        jsonschema.validate(obj, KSERVE_SCHEMA)

    custom = services["mnist"]["spec"]["predictor"]
    kubernetes_validate.validate(_pod_of(custom), K8S_VERSION, strict=True)
    [container] = custom["containers"]
    assert container["name"] == "kserve-container"
    assert "--bind" in container["args"] and "0.0.0.0:8080" in container["args"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["STORAGE_URI"] == "pvc://mnist-models" and env["MODEL_DIR"] == "/mnt/models"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"

    triton = services["mnist-triton"]["spec"]["predictor"]["model"]
    assert triton["runtime"] == "kserve-tritonserver" and triton["protocolVersion"] == "v2"
    assert triton["storageUri"] == env["STORAGE_URI"]  # the same repository
    container_part = {k: v for k, v in triton.items() if k in CONTAINER_FIELDS}
    pod = _pod_of({"containers": [{"name": "kserve-container", "image": "x", **container_part}]})
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda p: p.update(minReplicas=-1), "negative replicas"),
        (lambda p: p.update(scaleMetric="latency"), "unknown scale metric"),
        (lambda p: p.update(replicas=3), "a Deployment field, not KServe's"),
        (lambda p: p.update(model={"modelFormat": {"name": "onnx"}}), "model and containers"),
    ],
    ids=["min-replicas", "scale-metric", "unknown-field", "two-implementations"],
)
def test_the_kserve_check_rejects_what_kserve_would(
    rendered: dict[str, list[dict[str, Any]]],
    change: Callable[[dict[str, Any]], None],
    reason: str,
) -> None:
    obj = copy.deepcopy(next(o for o in rendered["kserve"] if o["metadata"]["name"] == "mnist"))
    change(obj["spec"]["predictor"])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(obj, KSERVE_SCHEMA)


def test_the_triton_runtime_reads_the_committed_repository_layout() -> None:
    config = (REPO_ROOT / "models" / "mnist" / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in config
    assert (REPO_ROOT / "models" / "mnist" / "1" / "model.onnx").is_file()
