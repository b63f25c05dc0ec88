"""Kubernetes manifests, container and compose files: core kinds against the Kubernetes JSON schemas
(kubernetes-validate, strict: unknown fields fail), CRDs structurally, and the wiring between them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from latentguard.server.config import Settings

from .script_loader import load_script

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S = DEPLOY / "k8s"
KUBE_VERSIONS = ["1.30.0", "1.33.0"]  # the oldest and a recent minor we claim to support
CORE = ["configmap.yaml", "deployment.yaml", "service.yaml", "hpa.yaml"]


def load(name: str) -> dict:
    return yaml.safe_load((K8S / name).read_text())


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("name", CORE)
def test_core_kinds_validate_against_the_kubernetes_schema(name, version):
    kubernetes_validate.validate(load(name), version, strict=True)


def test_kustomization_lists_every_manifest():
    resources = load("kustomization.yaml")["resources"]
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "prometheus-adapter-rules.yaml"}
    assert set(resources) == on_disk


def test_configmap_config_is_a_valid_latentguard_config(tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text(load("configmap.yaml")["data"]["config.yaml"])
    settings = Settings.load(cfg)
    assert settings.host == "0.0.0.0" and settings.device == "cuda"
    deployment = load("deployment.yaml")["spec"]["template"]["spec"]
    container = deployment["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": settings.port, "health": settings.health_port, "metrics": settings.metrics_port}
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert deployment["terminationGracePeriodSeconds"] > pre_stop + settings.grace_seconds


def test_tls_and_tokens_come_from_secrets(tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text(load("configmap.yaml")["data"]["config.yaml"])
    settings = Settings.load(cfg)
    assert settings.tls is not None and settings.tls.client_ca and settings.auth.tokens_file
    spec = load("deployment.yaml")["spec"]["template"]["spec"]
    secrets = {v["name"]: v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v}
    mounts = {m["name"]: m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
    assert set(secrets) == {"tls", "tokens"}
    for path in (settings.tls.cert, settings.tls.key, settings.tls.client_ca):
        assert path.startswith(mounts["tls"] + "/"), path
    assert settings.auth.tokens_file.startswith(mounts["tokens"] + "/")


def test_an_init_container_checks_the_served_config_with_the_same_mounts():
    spec = load("deployment.yaml")["spec"]["template"]["spec"]
    (check,), (server,) = spec["initContainers"], spec["containers"]
    assert check["image"] == server["image"]
    assert check["args"] == ["config", "check", server["args"][server["args"].index("--config") + 1]]
    assert check["volumeMounts"] == server["volumeMounts"]  # it sees the TLS files and tokens serve reads


def test_deployment_probes_gpu_and_drain():
    spec = load("deployment.yaml")["spec"]["template"]["spec"]
    container = spec["containers"][0]
    health = {p["name"]: p["containerPort"] for p in container["ports"]}["health"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == health, probe  # kubelet's gRPC probe has no TLS
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["lifecycle"]["preStop"]


def test_service_is_headless_and_selects_the_pods():
    service, deployment = load("service.yaml"), load("deployment.yaml")
    assert service["spec"]["clusterIP"] == "None"
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert {p["name"] for p in service["spec"]["ports"]} == {"grpc", "metrics"}


def test_hpa_scales_the_deployment_on_an_exported_metric():
    hpa, deployment = load("hpa.yaml"), load("deployment.yaml")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    metric = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
    assert f'"{metric}"' in (DEPLOY.parent / "server" / "metrics.py").read_text()
    adapter = yaml.safe_load((K8S / "prometheus-adapter-rules.yaml").read_text())
    assert adapter["rules"]["custom"][0]["name"]["as"] == metric


def test_servicemonitor_structure():
    sm, service = load("servicemonitor.yaml"), load("service.yaml")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1" and sm["kind"] == "ServiceMonitor"
    assert sm["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in sm["spec"]["endpoints"]:
        assert endpoint["port"] in service_ports and endpoint["path"] == "/metrics"
    # the rules select job="latentguard", which the operator sets to the Service name
    assert service["metadata"]["name"] == "latentguard"


def test_prometheusrule_is_generated_from_the_rule_files_and_passes_promtool(tmp_path):
    module = load_script(K8S / "generate_prometheusrule.py")
    assert (K8S / "prometheusrule.yaml").read_text() == module.render(), (
        "run deploy/k8s/generate_prometheusrule.py"
    )
    rule = load("prometheusrule.yaml")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["kind"] == "PrometheusRule"
    hosted = yaml.safe_load(module.render("https://docs.example.internal/latentguard/runbook/"))
    urls = [
        r["annotations"]["runbook_url"] for g in hosted["spec"]["groups"] for r in g["rules"] if "alert" in r
    ]
    assert urls and all(u.startswith("https://docs.example.internal/latentguard/runbook/#") for u in urls)
    groups = tmp_path / "groups.yml"
    groups.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    result = subprocess.run(["promtool", "check", "rules", str(groups)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_and_container_files_are_wired():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert {"latentguard", "prometheus", "grafana"} <= set(compose["services"])
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert (DEPLOY / source).exists(), volume
    build = compose["services"]["latentguard"]["build"]
    dockerfile = (DEPLOY / build["context"] / build["dockerfile"]).resolve()
    text = dockerfile.read_text()
    assert "nvidia/cuda" in text
    for line in text.splitlines():
        if line.startswith("COPY") and "--from" not in line:
            for source in line.split()[1:-1]:
                assert (DEPLOY.parent / source).exists(), line
    result = subprocess.run(
        ["promtool", "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_kserve_runtime_and_inference_service(tmp_path):
    kserve = K8S / "kserve"
    runtime, isvc, config = (
        yaml.safe_load((kserve / n).read_text())
        for n in ("servingruntime.yaml", "inferenceservice.yaml", "configmap.yaml")
    )
    kubernetes_validate.validate(config, KUBE_VERSIONS[-1], strict=True)
    assert set(yaml.safe_load((kserve / "kustomization.yaml").read_text())["resources"]) == {
        p.name for p in kserve.glob("*.yaml") if p.name != "kustomization.yaml"
    }
    assert (runtime["apiVersion"], runtime["kind"]) == ("serving.kserve.io/v1alpha1", "ServingRuntime")
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    model = isvc["spec"]["predictor"]["model"]
    assert (
        model["runtime"] == runtime["metadata"]["name"]
        and model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    )
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    container = runtime["spec"]["containers"][0]
    port = next(p for p in container["ports"] if p["name"] == "h2c")["containerPort"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert int(env["LATENTGUARD_PORT"]) == port
    mount = container["volumeMounts"][0]
    assert runtime["spec"]["volumes"][0]["configMap"]["name"] == config["metadata"]["name"]
    path = tmp_path / "config.yaml"
    path.write_text(config["data"]["config.yaml"])
    settings = Settings.load(path)
    assert [d.model for d in settings.deployments] == ["/mnt/models"]  # where KServe puts the model
    assert container["args"][-1].startswith(mount["mountPath"])
