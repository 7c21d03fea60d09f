"""The scale-out deployment files (docs/SCALE.md): Kubernetes manifests in deploy/k8s/ validated against the
Kubernetes OpenAPI schemas (``kubernetes-validate``, offline) and checked for what the schemas cannot see
(names that must match across files), and the HAProxy configuration renderer with its shipped example."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from dicom_node.haproxy_config import Balancer, Replica, main, render_config, render_down_state
from dicom_node.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
HAPROXY_DIR = ROOT / "deploy" / "haproxy"
#: oldest Kubernetes the manifests support (StatefulSet PVC retention policy on by default) and the newest schemas
K8S_VERSIONS = ("1.27.0", kubernetes_validate.latest_version())
OPTIONAL = {"servicemonitor.yaml"}  # needs the Prometheus Operator's CRDs: not in kustomization.yaml


def _docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text(encoding="utf-8")) if d]


def _kustomization() -> dict[str, Any]:
    return _docs("kustomization.yaml")[0]


def _resources() -> dict[tuple[str, str], dict[str, Any]]:
    """``{(kind, name): manifest}`` of every resource kustomization.yaml lists."""
    out = {}
    for name in _kustomization()["resources"]:
        for doc in _docs(name):
            out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


def _pod(resources: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    return resources[("StatefulSet", "cxr-node")]["spec"]["template"]


def test_kustomization_lists_every_manifest_of_the_folder() -> None:
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(_kustomization()["resources"]) == files - OPTIONAL
    assert OPTIONAL <= files


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_manifest_validates_against_the_kubernetes_schemas(version: str) -> None:
    validated = 0
    for name in _kustomization()["resources"]:
        for doc in _docs(name):
            kubernetes_validate.validate(doc, version, strict=True)  # raises ValidationError
            validated += 1
    assert validated >= 7


def test_validation_refuses_a_misspelt_field() -> None:
    """The check above can fail: a typo in a probe is an error (strict: no unknown properties)."""
    sts = _resources()[("StatefulSet", "cxr-node")]
    sts["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {"path": "/readyz"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, K8S_VERSIONS[-1], strict=True)


def test_names_and_labels_agree_across_the_manifests() -> None:
    res = _resources()
    sts = res[("StatefulSet", "cxr-node")]
    pod = _pod(res)
    labels = pod["metadata"]["labels"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
    container = pod["spec"]["containers"][0]
    port_names = {p["name"]: p["containerPort"] for p in container["ports"]}
    for kind, name in res:
        if kind == "Service":
            svc = res[(kind, name)]["spec"]
            assert svc["selector"].items() <= labels.items(), name
            assert all(p["targetPort"] in port_names for p in svc["ports"]), name
    assert res[("Service", sts["spec"]["serviceName"])]["spec"]["clusterIP"] == "None"
    assert res[("Service", "cxr-node")]["spec"]["ports"][0]["targetPort"] == "dicom"
    # drain = relabel a pod out of the DICOM Service while the StatefulSet still owns it (docs/SCALE.md)
    drain_label = "cxr-ai.org/serving"
    assert res[("Service", "cxr-node")]["spec"]["selector"][drain_label] == labels[drain_label] == "true"
    assert drain_label not in sts["spec"]["selector"]["matchLabels"]
    for ref in container["envFrom"]:
        kind = "ConfigMap" if "configMapRef" in ref else "Secret"
        assert (kind, (ref.get("configMapRef") or ref["secretRef"])["name"]) in res
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    claims = {c["metadata"]["name"] for c in sts["spec"]["volumeClaimTemplates"]}
    volumes = {v["name"] for v in pod["spec"].get("volumes", [])}
    assert set(mounts) <= claims | volumes
    policy = res[("NetworkPolicy", "cxr-node")]["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    assert {p["port"] for rule in policy["ingress"] for p in rule["ports"]} <= set(port_names)
    pdb = res[("PodDisruptionBudget", "cxr-node")]["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    monitor = _docs("servicemonitor.yaml")[0]["spec"]
    scraped = [
        res[k] for k in res if k[0] == "Service" and monitor["selector"]["matchLabels"].items() <= res[k]["metadata"]["labels"].items()
    ]  # fmt: skip
    assert len(scraped) == 1 and {p["name"] for p in scraped[0]["spec"]["ports"]} >= {e["port"] for e in monitor["endpoints"]}


def test_the_pod_runs_the_node_as_designed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Own spool volume kept after scale-down, readiness from /readyz, GPU requested, settings the node accepts."""
    res = _resources()
    sts = res[("StatefulSet", "cxr-node")]["spec"]
    container = _pod(res)["spec"]["containers"][0]
    settings = res[("ConfigMap", "cxr-node-settings")]["data"]
    assert sts["persistentVolumeClaimRetentionPolicy"] == {"whenScaled": "Retain", "whenDeleted": "Retain"}
    spool_mount = next(m for m in container["volumeMounts"] if m["name"] == "spool")
    assert spool_mount["mountPath"] == settings["CXR_NODE_SPOOL_DIR"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    metrics_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "metrics")
    dicom_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "dicom")
    assert str(metrics_port) == settings["CXR_NODE_HTTP_PORT"] and str(dicom_port) == settings["CXR_NODE_PORT"]
    assert settings["CXR_NODE_HTTP_BIND"] == "0.0.0.0"  # the kubelet probes the pod address
    for section in ("requests", "limits"):
        assert container["resources"][section]["nvidia.com/gpu"] == "1"
    # the node itself accepts the ConfigMap + Secret (e.g. a non-loopback bind needs an allow-list)
    secret = res[("Secret", "cxr-node-secrets")]["stringData"]
    for key in [k for k in os.environ if k.startswith("CXR_NODE_")]:
        monkeypatch.delenv(key)
    for key, value in {**settings, **secret}.items():
        monkeypatch.setenv(key, value)
    s = load_settings()
    assert s.port == dicom_port and s.http_port == metrics_port and str(s.spool_dir) == "/var/lib/cxr-node"
    assert [d.ae_title for d in s.destinations] == ["ORTHANC"] and s.allowed_aets == ["ORTHANC"]


# ------------------------------------------------------------------------------------ HAProxy
def _example() -> Balancer:
    return Balancer(bind="*:11112", replicas=tuple(Replica(f"node-{i}", f"10.0.0.1{i + 1}", 11112, 8080) for i in range(3)),
                    state_file=Path("/etc/haproxy/cxr-nodes-down.state"), stats_socket=Path("/run/haproxy/admin.sock"))  # fmt: skip


def test_shipped_haproxy_example_is_the_rendering(tmp_path: Path) -> None:
    args = [f"--replica=node-{i}=10.0.0.1{i + 1}:11112:8080" for i in range(3)]
    assert main([*args, "--out-dir", str(tmp_path)]) == 0
    for name in ("haproxy.cfg", "cxr-nodes-down.state"):
        assert (tmp_path / name).read_text() == (HAPROXY_DIR / name).read_text(), f"deploy/haproxy/{name} is stale"
    assert (HAPROXY_DIR / "haproxy.cfg").read_text() == render_config(_example())


def test_rendered_configuration_has_the_loss_avoiding_settings() -> None:
    cfg = render_config(_example())
    for line in ("mode tcp", "balance roundrobin", "option redispatch 1", "retries 3", "option httpchk GET /readyz",
                 "http-check expect status 200", "load-server-state-from-file global",
                 "server node-1 10.0.0.12:11112 check port 8080"):  # fmt: skip
        assert f"    {line}\n" in cfg, line
    state = render_down_state(_example()).splitlines()
    assert state[0] == "1" and len(state) == 2 + 3
    for row in state[2:]:
        cols = row.split()
        assert len(cols) == len(state[1].lstrip("# ").split())
        assert cols[5] == "0" and cols[12] == "0"  # op_state stopped, check health 0: DOWN until `rise` checks
        assert cols[18] == "11112" and cols[21] == "8080"  # the file's ports override the configuration's


@pytest.mark.parametrize(
    "bad",
    [
        dict(bind="11112"),
        dict(replicas=()),
        dict(retries=0),
        dict(replicas=(Replica("a", "h", 1, 2), Replica("a", "h", 3, 4))),
        dict(log_target="a b"),
    ],
)
def test_balancer_refuses_bad_settings(bad: dict[str, Any]) -> None:
    args: dict[str, Any] = dict(bind="*:11112", replicas=(Replica("a", "h", 1, 2),), state_file=Path("/s"))
    with pytest.raises(ValueError):
        Balancer(**{**args, **bad})


@pytest.mark.parametrize("text", ["node", "node=h:1", "node=h:x:2", "=h:1:2", "n m=h:1:2", "n=h:0:2", "n=h:1:70000"])
def test_replica_parse_refuses_malformed(text: str) -> None:
    with pytest.raises(ValueError, match="replica"):
        Replica.parse(text)


def test_replica_parse() -> None:
    assert Replica.parse("node-0=gpu-box-1.lan:11112:8080") == Replica("node-0", "gpu-box-1.lan", 11112, 8080)


def test_haproxy_accepts_the_rendered_configuration(tmp_path: Path) -> None:
    binary = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)
    if binary is None:
        pytest.skip("haproxy is not installed (scripts/setup.sh --ci installs it)")
    b = Balancer(bind="127.0.0.1:11112", replicas=_example().replicas, state_file=tmp_path / "down.state",
                 stats_socket=tmp_path / "admin.sock", log_target="stdout")  # fmt: skip
    (tmp_path / "haproxy.cfg").write_text(render_config(b))
    b.state_file.write_text(render_down_state(b))
    res = subprocess.run([binary, "-c", "-f", str(tmp_path / "haproxy.cfg")], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Configuration file is valid" in res.stdout + res.stderr
    bad = render_config(b).replace("option redispatch 1", "option redispatch-typo")
    (tmp_path / "bad.cfg").write_text(bad)
    res = subprocess.run([binary, "-c", "-f", str(tmp_path / "bad.cfg")], capture_output=True, text=True, timeout=30)
    assert res.returncode != 0
