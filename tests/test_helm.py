"""The Helm chart: `helm lint --strict`, `helm template` with the default and a
full-featured values file, the manifests validated offline against the
Kubernetes schemas (kubernetes-validate), the security settings checked, and
the rendered gateway config and policy ConfigMap loaded by the real gateway
code, laid out as the kubelet mounts them."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from gateway.audit.shipping.settings import SinkTls, parse_sinks
from gateway.config import ConfigError, load_config
from policy_engine import load_policy_set
from tests.conftest import FIXTURES, POLICIES, ROOT
from tests.decision_traffic import refunds_candidate
from tests.syslog_ng import make_ca

HELM = ROOT / ".tools" / "helm"
CHART = ROOT / "helm" / "portcullis"
FULL_VALUES = FIXTURES / "helm" / "full-values.yaml"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest known.
KUBERNETES_VERSIONS = ("1.25.0", kubernetes_validate.latest_version())

DEFAULT_KINDS = {
    "ConfigMap": 1, "Deployment": 1, "HorizontalPodAutoscaler": 1, "NetworkPolicy": 1,
    "PodDisruptionBudget": 1, "Service": 1, "ServiceAccount": 1,
}  # fmt: skip
# With the ServiceMonitor: a second, ClusterIP Service for the admin port.
FULL_KINDS = DEFAULT_KINDS | {"NetworkPolicy": 3, "ServiceMonitor": 1, "Service": 2}
# The Prometheus Operator's CRD: no schema in kubernetes-validate; checked by hand below.
CRD_KINDS = {"ServiceMonitor"}


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    assert HELM.exists(), "run `make test` (or `make .tools/helm`) to fetch helm"
    return subprocess.run([str(HELM), *args], capture_output=True, text=True, timeout=60)


def render(*options: str) -> list[dict[str, Any]]:
    result = helm("template", "gw", str(CHART), "--namespace", "edge", *options)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind]
    return found


def containers(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    return {c["name"]: c for c in pod["containers"]}


@pytest.fixture(scope="module")
def default_docs() -> list[dict[str, Any]]:
    return render()


@pytest.fixture(scope="module")
def full_docs() -> list[dict[str, Any]]:
    return render("-f", str(FULL_VALUES))


@pytest.mark.parametrize("values", [[], ["-f", str(FULL_VALUES)]], ids=["default", "full"])
def test_chart_passes_helm_lint_strict(values: list[str]) -> None:
    result = helm("lint", "--strict", str(CHART), *values)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("which", ["default", "full"])
def test_rendered_manifests_are_valid_kubernetes(which: str, request: Any) -> None:
    docs = request.getfixturevalue(f"{which}_docs")
    kinds = Counter(d["kind"] for d in docs)
    print(f"{which} values render: {dict(sorted(kinds.items()))}")
    assert kinds == Counter(DEFAULT_KINDS if which == "default" else FULL_KINDS)
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            continue
        for version in KUBERNETES_VERSIONS:
            # Raises ValidationError naming the field; strict rejects unknown fields.
            kubernetes_validate.validate(doc, version, strict=True)


def test_service_monitor_scrapes_the_admin_port(full_docs: list[dict[str, Any]]) -> None:
    monitor = one(full_docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint == {"port": "admin", "path": "/metrics", "interval": "30s", "scheme": "http"}
    selector = monitor["spec"]["selector"]["matchLabels"]
    pods = one(full_docs, "Deployment")["spec"]["selector"]["matchLabels"]
    assert selector == pods | {"app.kubernetes.io/component": "admin"}
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    # It selects the admin Service only, a ClusterIP one: the public Service (here a
    # LoadBalancer) carries no admin port.
    (admin,) = [d for d in full_docs if d["kind"] == "Service" and d["metadata"]["labels"]
                .get("app.kubernetes.io/component") == "admin"]  # fmt: skip
    assert admin["spec"]["type"] == "ClusterIP"
    assert admin["spec"]["ports"] == [
        {"name": "admin", "port": 9090, "targetPort": "admin", "protocol": "TCP"}
    ]
    (public,) = [d for d in full_docs if d["kind"] == "Service" and d is not admin]
    assert [port["targetPort"] for port in public["spec"]["ports"]] == ["http"]


@pytest.mark.parametrize("which", ["default", "full"])
def test_metrics_are_served_only_on_the_admin_listener(which: str, request: Any) -> None:
    docs = request.getfixturevalue(f"{which}_docs")
    config = yaml.safe_load(one(docs, "ConfigMap")["data"]["gateway.yaml"])
    assert config["admin_listener"] == {"address": "0.0.0.0", "port": 9090}
    ports = {p["name"]: p["containerPort"] for p in containers(docs)["gateway"]["ports"]}
    assert ports == {"http": 8080, "admin": 9090}
    # The gateway's own NetworkPolicy (the others are in the backends' namespaces).
    (gateway,) = [
        d for d in docs if d["kind"] == "NetworkPolicy" and "namespace" not in d["metadata"]
    ]
    policy = gateway["spec"]["ingress"]
    if which == "default":  # nobody but the kubelet reaches the admin port
        assert [rule["ports"] for rule in policy] == [[{"port": "http", "protocol": "TCP"}]]
    else:
        admin = [rule for rule in policy if rule["ports"][0]["port"] == "admin"]
        assert admin == [{"ports": [{"port": "admin", "protocol": "TCP"}], "from": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
        ]}]  # fmt: skip


@pytest.mark.parametrize("which", ["default", "full"])
def test_every_container_runs_restricted(which: str, request: Any) -> None:
    docs = request.getfixturevalue(f"{which}_docs")
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    for container in pod["containers"]:
        security = container["securityContext"]
        assert security["runAsNonRoot"] is True
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}
        assert container["resources"]["requests"] and container["resources"]["limits"]
        assert container["livenessProbe"] and container["readinessProbe"]
    assert "opa" in containers(docs) if which == "full" else len(pod["containers"]) == 1


@pytest.mark.parametrize("which", ["default", "full"])
def test_gateway_probes_use_the_health_endpoints(which: str, request: Any) -> None:
    gateway = containers(request.getfixturevalue(f"{which}_docs"))["gateway"]
    scheme = "HTTPS" if which == "full" else "HTTP"
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http",
                                                   "scheme": scheme}  # fmt: skip
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin",
                                                    "scheme": "HTTP"}  # fmt: skip
    assert gateway["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert gateway["args"][:3] == ["gateway", "--config", "/etc/portcullis/config/gateway.yaml"]


def test_no_secret_is_created_only_referenced(
    default_docs: list[dict[str, Any]], full_docs: list[dict[str, Any]]
) -> None:
    assert not [d for d in default_docs + full_docs if d["kind"] == "Secret"]
    secrets = {
        volume["name"]: volume["secret"]["secretName"]
        for volume in one(full_docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
        if "secret" in volume
    }
    assert secrets == {
        "assertion-key": "portcullis-assertion",
        "tls": "portcullis-tls",
        "oidc-client-secret": "portcullis-oidc",
        "session-keys": "portcullis-session",
        "opa-credentials": "bundle-token",
    }
    default_volumes = one(default_docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert {v["secret"]["secretName"] for v in default_volumes if "secret" in v} == {
        "gw-portcullis-assertion-key"
    }


def mounted_config(docs: list[dict[str, Any]], root: Path) -> Path:
    """The gateway.yaml the pod sees, with the pod's paths moved under `root`
    and the mounted Secrets present as files, as the kubelet would place them."""
    text = one(docs, "ConfigMap")["data"]["gateway.yaml"]
    text = text.replace("/opt/portcullis/policies", str(POLICIES))
    text = text.replace("/etc/portcullis/", f"{root}/etc/portcullis/")
    text = text.replace("/var/lib/portcullis/", f"{root}/var/lib/portcullis/")
    for secret in ("assertion/assertion-key.pem", "oidc/client-secret", "session/current.key",
                   "session/previous.key", "tls/tls.crt", "tls/tls.key"):  # fmt: skip
        (root / "etc/portcullis" / secret).parent.mkdir(parents=True, exist_ok=True)
        (root / "etc/portcullis" / secret).write_text(f"{secret} from a Secret\n")
    config = root / "etc/portcullis/config/gateway.yaml"
    config.parent.mkdir(parents=True)
    config.write_text(text)
    return config


def test_default_gateway_config_loads_in_the_gateway(
    default_docs: list[dict[str, Any]], tmp_path: Path
) -> None:
    config = load_config(mounted_config(default_docs, tmp_path))
    assert config.listeners[0].address == "0.0.0.0" and config.listeners[0].port == 8080
    assert config.admin_listener is not None and config.admin_listener.port == 9090
    assert config.policy.source == str(POLICIES)  # the image's /opt/portcullis/policies
    assert config.assertion.key_file == tmp_path / "etc/portcullis/assertion/assertion-key.pem"
    assert config.decision_log.path == tmp_path / "var/lib/portcullis/decisions.log"
    assert config.sign_in is None
    assert config.hsts_max_age == 31536000
    # The pod mounts a writable volume exactly where the decision log goes.
    mounts = {m["mountPath"]: m for m in containers(default_docs)["gateway"]["volumeMounts"]}
    assert not mounts["/var/lib/portcullis"].get("readOnly") and "/tmp" in mounts
    assert mounts["/etc/portcullis/assertion"]["readOnly"] is True


@pytest.mark.parametrize(
    ("options", "max_age"),
    [(["--set", "gateway.hstsMaxAge=0"], 0), (["--set-json", "gateway.hstsMaxAge=null"], None)],
)
def test_hsts_max_age_reaches_the_gateway_or_turns_it_off(
    options: list[str], max_age: int | None, tmp_path: Path
) -> None:
    assert load_config(mounted_config(render(*options), tmp_path)).hsts_max_age == max_age


def test_full_gateway_config_loads_with_sign_in_secrets_and_opa_sidecar(
    full_docs: list[dict[str, Any]], tmp_path: Path
) -> None:
    config = load_config(mounted_config(full_docs, tmp_path))
    assert config.policy.source == "http://localhost:8181"  # the OPA sidecar
    assert [r.app for r in config.routes] == ["wms", "pos", "analytics"]
    assert [i.issuer for i in config.issuers] == ["https://login.example.com",
                                                  "https://ci.example.com"]  # fmt: skip
    assert config.listeners[0].tls is not None
    assert config.sign_in is not None
    assert config.sign_in.client_secret == "oidc/client-secret from a Secret"
    assert config.sign_in.external_url == "https://gateway.example.com"
    assert [p.name for p in config.session.key_files] == ["current.key", "previous.key"]
    opa = containers(full_docs)["opa"]
    assert "--addr=localhost:8181" in opa["args"]
    assert "--config-file=/etc/opa/config/opa.yaml" in opa["args"]
    opa_config = yaml.safe_load(one(full_docs, "ConfigMap")["data"]["opa.yaml"])
    assert opa_config["services"]["bundles"]["url"] == "https://bundles.example.com"
    assert opa_config["bundles"]["portcullis"]["resource"] == "bundles/portcullis/policies.tar.gz"
    assert opa_config["services"]["bundles"]["credentials"]["bearer"]["token_path"] == (
        "/etc/opa/credentials/token"
    )
    # Shadow mode: the candidate bundle from its own ConfigMap, hot-reloaded.
    assert config.policy.shadow == f"{tmp_path}/etc/portcullis/shadow-policy/candidate.tar.gz"
    assert config.policy.watch
    pod = one(full_docs, "Deployment")["spec"]["template"]["spec"]
    assert {"name": "shadow-policy", "configMap": {"name": "portcullis-candidate"}} in pod[
        "volumes"
    ]
    # A shared claim: every pod writes its decision log under its own name.
    state = next(m for m in containers(full_docs)["gateway"]["volumeMounts"]
                 if m["name"] == "state")  # fmt: skip
    assert state["subPathExpr"] == "$(POD_NAME)"


def kubelet_mount(target: Path, files: dict[str, str | bytes]) -> Path:
    """A ConfigMap volume as the kubelet lays it out: the files in a timestamped
    directory, `..data` pointing at it, and a symlink per key at the top."""
    stamp = target / "..2026_01_01_00_00_00.000000000"
    stamp.mkdir(parents=True)
    for name, content in files.items():
        path = stamp / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        (target / name).symlink_to(Path("..data") / name)
    (target / "..data").symlink_to(stamp.name)
    return target


def shipped_policy_files() -> dict[str, str]:
    """The shipped policy set flattened to ConfigMap keys (file names are unique)."""
    files = {p.name: p.read_text() for p in sorted(POLICIES.rglob("*"))
             if p.is_file() and not p.name.endswith("_test.rego")}  # fmt: skip
    assert len(files) == len([p for p in POLICIES.rglob("*")
                              if p.is_file() and not p.name.endswith("_test.rego")])  # fmt: skip
    return files


def test_policy_set_from_the_chart_configmap_loads_as_mounted(tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"policy": {"mode": "configMap",
                                                 "files": shipped_policy_files()}}))  # fmt: skip
    docs = render("-f", str(values))
    policy_map = next(d for d in docs if d["kind"] == "ConfigMap"
                      and d["metadata"]["name"] == "gw-portcullis-policy")  # fmt: skip
    mount = kubelet_mount(tmp_path / "mount", policy_map["data"])
    gateway_docs = [d for d in docs if d["metadata"]["name"] != "gw-portcullis-policy"]
    config = load_config(mounted_config(gateway_docs, tmp_path / "pod"))
    assert config.policy.source.endswith("/etc/portcullis/policy") and config.policy.watch
    policy_set = load_policy_set(mount)
    assert policy_set.data["portcullis"]["catalogue"]["apps"].keys() == {"wms", "pos", "analytics"}
    check = subprocess.run(
        [str(Path(sys.executable).parent / "portcullis"), "policy", "check", str(mount)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr


def test_policy_bundle_from_an_existing_configmap_loads_as_mounted(tmp_path: Path) -> None:
    bundle = tmp_path / "policies.tar.gz"
    made = subprocess.run(
        [str(Path(sys.executable).parent / "portcullis"), "policy", "bundle", str(POLICIES),
         "-o", str(bundle)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    docs = render("--set", "policy.mode=configMap", "--set", "policy.existingConfigMap=my-policy",
                  "--set", "policy.bundleKey=policies.tar.gz")  # fmt: skip
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"] == ["gw-portcullis"]
    volumes = one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "policy", "configMap": {"name": "my-policy"}} in volumes
    pod = tmp_path / "pod"
    kubelet_mount(pod / "etc/portcullis/policy", {"policies.tar.gz": bundle.read_bytes()})
    config = load_config(mounted_config(docs, pod))
    assert config.policy.source == f"{pod}/etc/portcullis/policy/policies.tar.gz"
    assert load_policy_set(config.policy.source).revision


def test_shadow_policy_from_the_chart_configmap_loads_as_mounted(tmp_path: Path) -> None:
    # The README's worked example as the candidate: refunds within 300 s.
    candidate = refunds_candidate(tmp_path / "pr")
    files = {p.name: p.read_text() for p in sorted(candidate.rglob("*"))
             if p.is_file() and not p.name.endswith("_test.rego")}  # fmt: skip
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"policy": {"shadow": {"mode": "configMap",
                                                            "files": files}}}))  # fmt: skip
    docs = render("-f", str(values))
    lint = helm("lint", "--strict", str(CHART), "-f", str(values))
    assert lint.returncode == 0, lint.stdout + lint.stderr
    shadow_map = next(d for d in docs if d["kind"] == "ConfigMap"
                      and d["metadata"]["name"] == "gw-portcullis-shadow-policy")  # fmt: skip
    mount = kubelet_mount(tmp_path / "pod/etc/portcullis/shadow-policy", shadow_map["data"])
    gateway_docs = [d for d in docs if d is not shadow_map]
    config = load_config(mounted_config(gateway_docs, tmp_path / "pod"))
    assert config.policy.source == str(POLICIES)  # live: the image's policy set
    assert config.policy.shadow == str(mount) and config.policy.watch
    gateway = containers(docs)["gateway"]
    assert {"name": "shadow-policy", "mountPath": "/etc/portcullis/shadow-policy",
            "readOnly": True} in gateway["volumeMounts"]  # fmt: skip
    shadow_set = load_policy_set(config.policy.shadow)
    refunds = shadow_set.data["portcullis"]["catalogue"]["apps"]["pos"]["paths"]
    assert [p["mfa"]["max_age"] for p in refunds if p["prefix"] == "/pos/refunds/"] == [300]


@pytest.mark.parametrize(
    ("options", "shadow"),
    [
        ([], None),
        (["--set", "policy.shadow.mode=image", "--set", "policy.shadow.path=/opt/candidate"],
         "/opt/candidate"),
        (["--set", "policy.shadow.mode=opa", "--set", "policy.shadow.url=http://opa.policy:8181"],
         "http://opa.policy:8181"),
    ],
    ids=["off", "image", "opa"],
)  # fmt: skip
def test_shadow_policy_from_the_image_or_an_opa_server(
    options: list[str], shadow: str | None, tmp_path: Path
) -> None:
    docs = render(*options)
    config = load_config(mounted_config(docs, tmp_path))
    assert config.policy.shadow == shadow
    assert not config.policy.watch  # nothing the kubelet updates in place
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"] == ["gw-portcullis"]


def test_network_policies_let_only_the_gateway_reach_the_backends(
    full_docs: list[dict[str, Any]],
) -> None:
    policies = {d["metadata"]["name"]: d for d in full_docs if d["kind"] == "NetworkPolicy"}
    gateway_labels = one(full_docs, "Deployment")["spec"]["selector"]["matchLabels"]
    retail = policies["gw-portcullis-only-gateway-0"]
    assert retail["metadata"]["namespace"] == "retail"
    assert retail["spec"]["podSelector"] == {"matchLabels": {"app.kubernetes.io/part-of":
                                                             "retail-apps"}}  # fmt: skip
    (rule,) = retail["spec"]["ingress"]
    assert rule["from"] == [{
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "edge"}},
        "podSelector": {"matchLabels": gateway_labels},
    }]  # fmt: skip
    assert rule["ports"] == [{"port": 8080, "protocol": "TCP"}, {"port": 8443, "protocol": "TCP"}]
    bi = policies["gw-portcullis-only-gateway-1"]
    assert bi["metadata"]["namespace"] == "bi" and bi["spec"]["podSelector"] == {}
    assert "ports" not in bi["spec"]["ingress"][0]
    own = policies["gw-portcullis"]
    assert own["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "ingress-nginx"
    }


def test_autoscaling_owns_the_replica_count(default_docs: list[dict[str, Any]]) -> None:
    assert "replicas" not in one(default_docs, "Deployment")["spec"]
    hpa = one(default_docs, "HorizontalPodAutoscaler")
    assert (
        hpa["spec"]["scaleTargetRef"]["name"] == one(default_docs, "Deployment")["metadata"]["name"]
    )
    fixed = render("--set", "autoscaling.enabled=false", "--set", "replicaCount=3")
    assert one(fixed, "Deployment")["spec"]["replicas"] == 3
    assert not [d for d in fixed if d["kind"] == "HorizontalPodAutoscaler"]
    assert one(default_docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--set", "policy.mode=bundle"], 'policy.mode must be one of the following: "image"'),
        (["--set", "replicaCount=two"], "replicaCount: Invalid type"),
        (["--set", "gatway.port=8080"], "Additional property gatway is not allowed"),
        (["--set", "gateway.issuers[0].issuer=x", "--set", "gateway.issuers[0].audiences={}"],
         "gateway.issuers.0.audiences"),
        (["--set", "gateway.routes[0].app=pos", "--set", "gateway.routes[0].upstream=pos:8080"],
         "gateway.routes.0.upstream"),
        (["--set", "signIn.scopes={email}"], "signIn.scopes"),
        (["--set", "gateway.assertion.ttl=600"], "gateway.assertion.ttl"),
        (["--set", "policy.files.notes\\.txt=1"], "policy.files"),
        (["--set", "service.type=External"], "service.type"),
        (["--set-json", "gateway.issuers=[]"], "issuers is empty and signIn.enabled is false"),
        (["--set", "signIn.enabled=true"], "needs signIn.issuer and signIn.clientId"),
        (["--set", "policy.mode=configMap"], "policy.mode needs a policy set"),
        (["--set", "policy.mode=opa"], "policy.mode needs a policy set"),
        (["--set", "gateway.adminPort=8080"], "gateway.adminPort must differ from gateway.port"),
        (["--set", "gateway.adminPort=80"], "gateway.adminPort"),
        (["--set", "gateway.hstsMaxAge=-1"], "gateway.hstsMaxAge"),
        (["--set", "policy.shadow.mode=bundle"], "policy.shadow.mode must be one of"),
        (["--set", "policy.shadow.mode=image"], "mode image needs policy.shadow.path"),
        (["--set", "policy.shadow.mode=image", "--set", "policy.shadow.path=candidate/"],
         "policy.shadow.path"),
        (["--set", "policy.shadow.mode=configMap"],
         "policy.shadow.mode configMap needs policy.shadow.files or"),
        (["--set", "policy.shadow.mode=opa"], "policy.shadow.mode opa needs policy.shadow.url"),
        (["--set", "policy.shadow.mode=opa", "--set", "policy.shadow.url=opa:8181"],
         "policy.shadow.url"),
    ],
)  # fmt: skip
def test_bad_values_fail_before_anything_is_installed(options: list[str], message: str) -> None:
    result = helm("template", "gw", str(CHART), *options)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


SINKS = json.dumps([
    {"name": "siem", "kind": "syslog", "address": "siem.example.com:6514", "format": "ocsf",
     "tls": {"caSecret": {"name": "siem-ca", "key": "ca.crt"}}},
    {"name": "splunk", "kind": "http", "url": "https://splunk.example.com:8088/services/collector/event",
     "envelope": "splunk_hec", "format": "ocsf", "tokenSecret": {"name": "splunk-hec"}},
    {"name": "copy", "kind": "file", "format": "opa"},
])  # fmt: skip


def test_decision_log_sinks_load_with_their_secrets_mounted(tmp_path: Path) -> None:
    docs = render("--set-json", f"gateway.decisionLog.sinks={SINKS}",
                  "--set", "gateway.decisionLog.durability=sync")  # fmt: skip
    config_path = mounted_config(docs, tmp_path)
    for secret in ("sinks/siem/ca.crt", "sinks/splunk/token"):
        (tmp_path / "etc/portcullis" / secret).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "etc/portcullis" / secret).write_text("from a Secret\n")
    # A CA file must load as PEM (checked when the config is read).
    (tmp_path / "ca").mkdir()
    ca = make_ca(tmp_path / "ca")
    (tmp_path / "etc/portcullis/sinks/siem/ca.crt").write_bytes(ca.read_bytes())
    settings = load_config(config_path).decision_log
    assert settings.durability == "sync"
    siem, splunk, copy = settings.sinks
    assert siem.tls is not None
    assert siem.tls.ca_file == tmp_path / "etc/portcullis/sinks/siem/ca.crt"
    assert splunk.token_file == tmp_path / "etc/portcullis/sinks/splunk/token"
    # The copy and every cursor live on the state volume (the claim, when set).
    assert copy.path == tmp_path / "var/lib/portcullis/copy.jsonl"
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    projected = {v["name"]: v["projected"]["sources"] for v in pod["volumes"] if "projected" in v}
    assert [s["secret"]["name"] for s in projected["sink-0"]] == ["siem-ca"]
    assert [s["secret"]["name"] for s in projected["sink-1"]] == ["splunk-hec"]
    mounts = {m["name"]: m["mountPath"] for m in containers(docs)["gateway"]["volumeMounts"]}
    assert mounts["sink-0"] == "/etc/portcullis/sinks/siem"
    assert mounts["sink-1"] == "/etc/portcullis/sinks/splunk"
    assert not [d for d in docs if d["kind"] == "Secret"]


def test_a_sink_token_in_values_is_refused() -> None:
    bad = json.dumps([{"name": "s", "kind": "http", "url": "https://x/logs", "token": "t"}])
    result = helm("template", "gw", str(CHART), "--set-json", f"gateway.decisionLog.sinks={bad}")
    assert result.returncode != 0 and "token" in result.stderr


@pytest.mark.parametrize(
    "options",
    [
        ["--set", "sharedState.redisUrl=redis://:hunter2@redis.edge.svc:6379/0"],
        ["--set", "sharedState.redisUrl=rediss://gateway:hunter2@redis.edge.svc:6380/0"],
        ["--set", "sharedState.redisUrl=redis://redis.edge.svc:6379/0?password=hunter2"],
        ["--set", "sharedState.redisUrl=unix://:hunter2@/run/redis.sock"],
        ["--set", "policy.mode=opa",
         "--set", "policy.opa.bundle.serviceUrl=https://bot:hunter2@bundles.example.com"],
        ["--set", "policy.shadow.mode=opa",
         "--set", "policy.shadow.url=http://hunter2@opa-candidate.edge.svc:8181"],
    ],
    ids=["redis-password", "redis-user-password", "redis-query", "unix", "opa-bundle", "shadow"],
)  # fmt: skip
def test_a_password_in_a_url_value_is_refused_not_written_to_the_configmap(
    options: list[str],
) -> None:
    """The chart's Secrets are mounted as files; a URL's password would be written
    into the ConfigMap (readable with Kubernetes' `view` role) and the release
    history. The chart takes each through a Secret (sharedState.password,
    opa.bundle.credentialsSecretName), so a URL holding one is refused."""
    result = helm("template", "gw", str(CHART), "--set", "sharedState.enabled=true", *options)
    assert result.returncode != 0, [ln for ln in result.stdout.splitlines() if "hunter2" in ln]
    key = options[-1].partition("=")[0]
    assert f"{key}: Must not validate the schema (not)" in result.stderr, result.stderr
    assert "hunter2" not in result.stderr


def test_a_redis_url_with_a_user_name_and_the_password_from_a_secret_loads(tmp_path: Path) -> None:
    docs = render(
        "--set", "sharedState.enabled=true",
        "--set", "sharedState.redisUrl=rediss://gateway@redis.edge.svc:6380/0",
        "--set", "sharedState.password.secretName=redis-auth",
    )  # fmt: skip
    config = mounted_config(docs, tmp_path)
    password = tmp_path / "etc/portcullis/redis/password"
    password.parent.mkdir(parents=True)
    password.write_text("hunter2\n")
    shared = load_config(config).shared_state
    assert shared is not None
    assert shared.redis.url == "rediss://gateway@redis.edge.svc:6380/0"
    assert shared.redis.password == "hunter2"


@pytest.mark.parametrize(
    ("tls", "encrypted"),
    [({}, True), (True, True), ({"serverName": "siem.example.com"}, True), (False, False),
     (None, False)],
    ids=["empty-map", "true", "server-name", "false", "absent"],
)  # fmt: skip
def test_syslog_sink_tls_empty_map_or_true_is_not_downgraded_to_plain_tcp(
    tls: Any, encrypted: bool, tmp_path: Path
) -> None:
    """`tls: {}` (an empty map is false to a template's `if`) and `tls: true` (the
    README's way to ask for the system CAs) both mean TLS, as in gateway.yaml."""
    sink: dict[str, Any] = {"name": "siem", "kind": "syslog", "address": "siem.example.com:6514"}
    if tls is not None:
        sink["tls"] = tls
    docs = render("--set-json", f"gateway.decisionLog.sinks={json.dumps([sink])}")
    (siem,) = load_config(mounted_config(docs, tmp_path)).decision_log.sinks
    if not encrypted:
        assert siem.tls is None
        return
    assert siem.tls is not None
    assert siem.tls.ca_file is None  # the system CAs
    if isinstance(tls, dict):
        assert siem.tls.server_name == tls.get("serverName")


def test_an_https_sink_behind_a_private_ca_loads_with_its_ca_and_client_certificate(
    tmp_path: Path,
) -> None:
    """`tls.caSecret` on an http sink (Splunk HEC behind a corporate CA) used to pass
    the schema and render `tls:` the gateway refused as an unknown key: a pod in a
    crash loop. Now it renders the CA (and a client certificate) the gateway loads."""
    sink = {"name": "splunk_hec", "kind": "http", "envelope": "splunk_hec",
            "url": "https://splunk.example.com:8088/services/collector/event",
            "tokenSecret": {"name": "hec"},
            "tls": {"caSecret": {"name": "corp-ca", "key": "ca.pem"},
                    "clientCertSecret": {"name": "gw-client"},
                    "serverName": "hec.internal"}}  # fmt: skip
    docs = render("--set-json", f"gateway.decisionLog.sinks={json.dumps([sink])}")
    assert result_of_lint("--set-json", f"gateway.decisionLog.sinks={json.dumps([sink])}") == 0
    config_path = mounted_config(docs, tmp_path)
    secrets = tmp_path / "etc/portcullis/sinks/splunk_hec"
    secrets.mkdir(parents=True)
    (tmp_path / "pki").mkdir()
    ca = make_ca(tmp_path / "pki")
    (secrets / "ca.crt").write_bytes(ca.read_bytes())
    (secrets / "tls.crt").write_bytes((tmp_path / "pki/server.pem").read_bytes())
    (secrets / "tls.key").write_bytes((tmp_path / "pki/server.key").read_bytes())
    (secrets / "token").write_text("from a Secret\n")
    (splunk,) = load_config(config_path).decision_log.sinks
    assert splunk.tls == SinkTls(secrets / "ca.crt", secrets / "tls.crt", secrets / "tls.key",
                                 "hec.internal")  # fmt: skip
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "sink-0"]
    assert [s["secret"] for s in volume["projected"]["sources"]] == [
        {"name": "hec", "items": [{"key": "token", "path": "token"}]},
        {"name": "corp-ca", "items": [{"key": "ca.pem", "path": "ca.crt"}]},
        {"name": "gw-client", "items": [{"key": "tls.crt", "path": "tls.crt"},
                                        {"key": "tls.key", "path": "tls.key"}]},
    ]  # fmt: skip


def result_of_lint(*options: str) -> int:
    result = helm("lint", "--strict", str(CHART), *options)
    return result.returncode


@pytest.mark.parametrize(
    "name",
    ["splunk_hec", "a" * 63, "siem-", "0", "x_" + "y" * 61],
    ids=["underscore", "63-chars", "trailing-dash", "digit", "underscore-63"],
)
def test_every_sink_name_the_schema_accepts_makes_valid_volume_names(
    name: str, tmp_path: Path
) -> None:
    """Names the gateway (and the schema) accept: '_' and up to 63 characters. The
    Secrets' volume was `sink-<name>`, which Kubernetes refuses for these (not a
    DNS-1123 label); it is `sink-<index>` now, mounted at the sink's name."""
    sinks = [{"name": "copy", "kind": "file"},
             {"name": name, "kind": "http", "url": "https://hec.example.com/logs",
              "tokenSecret": {"name": "hec"}, "tls": {"caSecret": {"name": "ca"}}}]  # fmt: skip
    docs = render("--set-json", f"gateway.decisionLog.sinks={json.dumps(sinks)}")
    deployment = one(docs, "Deployment")
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(deployment, version, strict=True)
    mounts = {m["mountPath"]: m["name"] for m in containers(docs)["gateway"]["volumeMounts"]}
    assert mounts[f"/etc/portcullis/sinks/{name}"] == "sink-1"
    config = yaml.safe_load(one(docs, "ConfigMap")["data"]["gateway.yaml"])
    assert [s["name"] for s in config["decision_log"]["sinks"]] == ["copy", name]


@pytest.mark.parametrize(
    ("sinks", "message"),
    [
        # The gateway refuses a file beside the log whose name starts with the log's: its
        # tail looks for rotated copies among those, and its .head and cursors are there.
        ([{"name": "archive", "kind": "file", "path": "decisions.log.archive"}],
         "sinks.0.path: Must not validate the schema"),
        ([{"name": "archive", "kind": "file", "path": ".."}], "sinks.0.path"),
        ([{"name": "copy", "kind": "file", "url": "https://x/logs"}],
         'Property name of "url" does not match'),
        ([{"name": "copy", "kind": "file", "tls": True}], 'Property name of "tls" does not match'),
        ([{"name": "siem", "kind": "syslog", "address": "siem:514", "url": "https://x"}],
         'Property name of "url" does not match'),
        ([{"name": "siem", "kind": "syslog"}], "address is required"),
        ([{"name": "hec", "kind": "http", "url": "http://hec:8088/logs",
           "tls": {"caSecret": {"name": "ca"}}}], "sinks.0.url: Does not match pattern"),
        ([{"name": "hec", "kind": "http", "url": "https://hec:8088/logs", "tls": True}],
         "sinks.0.tls: Invalid type"),
        ([{"name": "hec", "kind": "http", "url": "https://hec:8088/e", "envelope": "splunk_hec"}],
         "tokenSecret is required"),
        ([{"name": "a", "kind": "file"}, {"name": "a", "kind": "file", "path": "b.jsonl"}],
         "sinks[1].name: \"a\" is also sinks[0]'s name"),
        ([{"name": "a", "kind": "file", "path": "b.jsonl"}, {"name": "b", "kind": "file"}],
         "sinks[1].path: \"b.jsonl\" is also sinks[0]'s file"),
    ],
    ids=["log-prefix", "dotdot", "file-url", "file-tls", "syslog-url", "syslog-no-address",
         "tls-on-http", "http-tls-true", "hec-no-token", "same-name", "same-file"],
)  # fmt: skip
def test_sinks_the_gateway_would_refuse_fail_before_anything_is_installed(
    sinks: list[dict[str, Any]], message: str
) -> None:
    """Each of these passed the schema and crash-looped the pod on the gateway's
    ConfigError (a sink key of another kind rendered as an unknown key, too)."""
    values = f"gateway.decisionLog.sinks={json.dumps(sinks)}"
    result = helm("template", "gw", str(CHART), "--set-json", values)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    if "is also" not in message:  # a template's `fail` is only an [INFO] to helm lint
        assert result_of_lint("--set-json", values) != 0


# Values a sink's address, facility or url may hold that the gateway refuses at start
# (a crash-looping pod): the schema refuses the same, before anything is installed.
WRONG_SINK_VALUES = [
    ({"kind": "syslog", "address": "siem.example.com"}, "sinks.0.address: Does not match"),
    ({"kind": "syslog", "address": "siem.example.com:0"}, "sinks.0.address: Does not match"),
    ({"kind": "syslog", "address": "siem.example.com:65536"}, "sinks.0.address: Does not match"),
    ({"kind": "syslog", "address": ":514"}, "sinks.0.address: Does not match"),
    ({"kind": "syslog", "address": "siem:514", "facility": "auth-priv"},
     "sinks.0.facility must be one of the following: \"kern\", \"user\""),
    ({"kind": "syslog", "address": "siem:514", "facility": "LOCAL0"}, "sinks.0.facility"),
    ({"kind": "http", "url": "splunk:8088/x"}, "sinks.0.url: Does not match"),
    ({"kind": "http", "url": "ftp://splunk/x"}, "sinks.0.url: Does not match"),
    ({"kind": "http", "url": "https://:8088/x"}, "sinks.0.url: Does not match"),
    ({"kind": "http", "url": "https://splunk:0/x"}, "sinks.0.url: Does not match"),
    ({"kind": "http", "url": "https://splunk:80a/x"}, "sinks.0.url: Does not match"),
    ({"kind": "http", "url": "https://user:secret@splunk/x"}, "sinks.0.url: Must not validate"),
    ({"kind": "http", "url": "https://splunk/mail@example.com"}, "sinks.0.url: Must not validate"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("sink", "message"),
    WRONG_SINK_VALUES,
    ids=["address-without-port", "address-port-0", "address-port-65536", "address-without-host",
         "facility-not-rfc5424", "facility-upper-case", "url-without-scheme", "url-not-http",
         "url-without-host", "url-port-0", "url-port-not-a-number", "url-with-credentials",
         "url-with-at-in-path"],
)  # fmt: skip
def test_a_sink_address_facility_or_url_the_gateway_refuses_fails_before_anything_is_installed(
    sink: dict[str, Any], message: str, tmp_path: Path
) -> None:
    """These passed `helm template` and `helm lint` and the pod crash-looped on the
    gateway's ConfigError ("expected host:port", "must be an http(s) URL", ...)."""
    with pytest.raises(ConfigError):  # what the schema mirrors: the gateway's own check
        parse_sinks([{"name": "s", **sink}], tmp_path)
    values = f"gateway.decisionLog.sinks={json.dumps([{'name': 's', **sink}])}"
    result = helm("template", "gw", str(CHART), "--set-json", values)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    assert result_of_lint("--set-json", values) != 0


def test_sink_addresses_facilities_and_urls_the_gateway_accepts_render_and_load(
    tmp_path: Path,
) -> None:
    """The schema's patterns are no stricter than the gateway: each spelling it
    accepts renders and loads."""
    sinks = [
        {"name": "v6", "kind": "syslog", "address": "[2001:db8::1]:514", "facility": "local7"},
        {"name": "ip", "kind": "syslog", "address": "10.0.0.7:65535", "facility": "kern"},
        {"name": "plain", "kind": "http", "url": "http://splunk"},
        {"name": "upper", "kind": "http", "url": "HTTPS://Splunk.example.com:8088"},
        {"name": "query", "kind": "http", "url": "https://[2001:db8::2]:8088/e?as=me@corp"},
    ]  # fmt: skip
    values = f"gateway.decisionLog.sinks={json.dumps(sinks)}"
    assert result_of_lint("--set-json", values) == 0
    loaded = load_config(mounted_config(render("--set-json", values), tmp_path)).decision_log
    assert [(s.name, s.address or s.url) for s in loaded.sinks] == [
        (s["name"], s.get("address") or s.get("url")) for s in sinks
    ]
    assert [s.facility for s in loaded.sinks[:2]] == [23, 0]


def test_every_not_in_the_values_schema_says_what_is_expected() -> None:
    """helm reports a `not` only as "Must not validate the schema (not)": the
    description beside it is all a user has to go on."""

    def nots(node: Any) -> list[Any]:
        if isinstance(node, dict):
            found = [node["not"]] if "not" in node else []
            return found + [n for value in node.values() for n in nots(value)]
        if isinstance(node, list):
            return [n for value in node for n in nots(value)]
        return []

    found = nots(json.loads((CHART / "values.schema.json").read_text()))
    assert found
    assert all(n.get("description") for n in found), [n for n in found if not n.get("description")]


def test_a_file_sink_path_beside_the_log_with_its_own_name_is_accepted(tmp_path: Path) -> None:
    sinks = [{"name": "archive", "kind": "file", "path": "archive.decisions.log"}]
    docs = render("--set-json", f"gateway.decisionLog.sinks={json.dumps(sinks)}")
    (archive,) = load_config(mounted_config(docs, tmp_path)).decision_log.sinks
    assert archive.path == tmp_path / "var/lib/portcullis/archive.decisions.log"


def test_a_sink_without_a_format_ships_the_gateways_default_opa(tmp_path: Path) -> None:
    """The chart used to render `format: ocsf` for a sink without one, the gateway's
    config file defaults to opa: one product, two defaults."""
    sinks = [{"name": "copy", "kind": "file"}, {"name": "ecs", "kind": "file", "format": "ecs"}]
    docs = render("--set-json", f"gateway.decisionLog.sinks={json.dumps(sinks)}")
    copy, ecs = load_config(mounted_config(docs, tmp_path)).decision_log.sinks
    assert (copy.format, ecs.format) == ("opa", "ecs")


def test_a_statefulset_gives_each_pod_a_claim_a_replacement_pod_resumes(tmp_path: Path) -> None:
    """Under the Deployment a replacement pod has a new name, so on a shared claim it
    starts a new directory and the old pod's unshipped tail is never shipped. With
    decisionLog.statefulSet the pods keep their names and each its own claim."""
    docs = render("--set", "decisionLog.statefulSet.enabled=true",
                  "--set", "decisionLog.statefulSet.size=5Gi",
                  "--set", "decisionLog.statefulSet.storageClassName=fast")  # fmt: skip
    assert not [d for d in docs if d["kind"] == "Deployment"]
    workload = one(docs, "StatefulSet")
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(workload, version, strict=True)
    spec = workload["spec"]
    assert spec["serviceName"] == workload["metadata"]["name"]
    (claim,) = spec["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "state"
    assert claim["spec"] == {"accessModes": ["ReadWriteOnce"], "storageClassName": "fast",
                             "resources": {"requests": {"storage": "5Gi"}}}  # fmt: skip
    pod = spec["template"]["spec"]
    assert "state" not in [v["name"] for v in pod["volumes"]]  # the claim template's
    (gateway,) = [c for c in pod["containers"] if c["name"] == "gateway"]
    (state,) = [m for m in gateway["volumeMounts"] if m["name"] == "state"]
    assert state == {"name": "state", "mountPath": "/var/lib/portcullis"}  # the claim is its own
    target = one(docs, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("StatefulSet", workload["metadata"]["name"])
    pdb = one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"]
    assert pdb.items() <= spec["template"]["metadata"]["labels"].items()
    config = load_config(mounted_config(docs, tmp_path))
    assert config.decision_log.path == tmp_path / "var/lib/portcullis/decisions.log"


def test_a_statefulset_and_a_shared_claim_are_refused_together() -> None:
    result = helm("template", "gw", str(CHART), "--set", "decisionLog.statefulSet.enabled=true",
                  "--set", "decisionLog.persistentVolumeClaim=shared")  # fmt: skip
    assert result.returncode != 0
    assert "leave decisionLog.persistentVolumeClaim empty" in result.stderr
