"""conf/kubernetes/ checked offline (API schemas, references between objects, settings) and
against a live pool (every metric the manifests name, the preStop hook's drain)."""

from __future__ import annotations

import copy
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from pool.devserver.server import DevServer
from tests.conf.manifests import (
    CUSTOM_KINDS,
    KUBERNETES,
    METRIC,
    ROOT,
    adapter_rules,
    all_manifests,
    by_kind,
    documents,
    env_of,
    one,
)
from tests.supervisor.conftest import (
    COMMON,
    DEADLINE,
    HELLO_BODY,
    http_get,
    job,
    plan,
    wait_run,
    wait_until,
)

# the oldest Kubernetes still common in managed clusters, and the newest the schemas know
VERSIONS = ("1.29.0", kubernetes_validate.latest_version())


def pool_container() -> dict:
    (container,) = one("Deployment")["spec"]["template"]["spec"]["containers"]
    return container


@pytest.mark.parametrize("version", VERSIONS)
def test_built_in_kinds_pass_the_api_schemas(version: str) -> None:
    checked = []
    for path, doc in all_manifests():
        if doc["kind"] in CUSTOM_KINDS:
            continue
        kubernetes_validate.validate(doc, version, strict=True)  # raises on any error
        checked.append(f"{path.relative_to(KUBERNETES)}: {doc['kind']}")
    print(f"\nvalid against Kubernetes {version} (strict):", *checked, sep="\n  ")
    assert {"Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy",
            "HorizontalPodAutoscaler", "ConfigMap", "Secret"} <= {
        line.rsplit(": ", 1)[1] for line in checked}
    typo = copy.deepcopy(one("Deployment"))  # the validator is not vacuous: a typo fails
    typo["spec"]["template"]["spec"]["terminationGracePeriodSecond"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, version, strict=True)


def test_every_object_names_the_pools_it_is_for() -> None:
    deployment = one("Deployment")
    name = deployment["metadata"]["name"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()

    def selects_pods(selector: dict) -> bool:
        return bool(selector) and selector.items() <= pod_labels.items()

    assert selects_pods(one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"])
    assert selects_pods(one("NetworkPolicy")["spec"]["podSelector"]["matchLabels"])
    service = one("Service")
    assert selects_pods(service["spec"]["selector"])
    port_names = {p["name"] for p in pool_container()["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    monitor = one("ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= \
        service["metadata"]["labels"].items()
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {
        p["name"] for p in service["spec"]["ports"]}
    for scaler in (one("HorizontalPodAutoscaler"), one("ScaledObject")):
        target = scaler["spec"]["scaleTargetRef"]
        assert (target.get("kind"), target["name"]) == ("Deployment", name)
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["secrets"]["secret"]["secretName"] == one("Secret")["metadata"]["name"]
    kustomization = one("Kustomization")
    for resource in kustomization["resources"]:
        assert (KUBERNETES / resource).is_file(), resource
    # never both autoscalers on one Deployment, and never the example secret over a real one
    assert not any(r.startswith("autoscaling/") or "secret" in r
                   for r in kustomization["resources"])


def test_the_pod_outlives_its_longest_run_and_holds_its_runs_memory() -> None:
    spec = one("Deployment")["spec"]["template"]["spec"]
    env = env_of(pool_container())
    max_run = float(env["WORKER_MAX_RUN_DURATION_SECONDS"])
    graceful = float(env.get("WORKER_GRACEFUL_TIMEOUT_SECONDS") or max_run)
    assert spec["terminationGracePeriodSeconds"] > max(max_run, graceful)
    limit = pool_container()["resources"]["limits"]["memory"]
    assert limit.endswith("Mi")
    size, run_mb = int(env["WORKER_CAPACITY"]), int(env["WORKER_MAX_RUN_MEMORY_MB"])
    assert int(limit[:-2]) >= size * run_mb  # every executor may hold a full-size run


def test_the_security_context_is_the_uid_sandbox_and_secrets_are_files() -> None:
    spec = one("Deployment")["spec"]["template"]["spec"]
    context = pool_container()["securityContext"]
    assert context["runAsUser"] == 0 and context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"], "add": ["SETUID", "SETGID", "KILL"]}
    assert env_of(pool_container())["WORKER_SANDBOX"] == "uid"
    assert spec["automountServiceAccountToken"] is False
    (secrets,) = [v for v in spec["volumes"] if "secret" in v]
    assert secrets["secret"]["defaultMode"] == 0o400
    mount = next(m for m in pool_container()["volumeMounts"] if m["name"] == secrets["name"])
    env = env_of(pool_container())
    assert env["WORKER_SECRET_FILE"].startswith(mount["mountPath"] + "/")
    assert "WORKER_SECRET" not in env
    state = next(m for m in pool_container()["volumeMounts"]
                 if m["mountPath"] == env["WORKER_STATE_DIR"])
    assert "emptyDir" in next(v for v in spec["volumes"] if v["name"] == state["name"])


def test_the_hpa_scales_on_the_adapters_metrics_and_keda_on_the_same() -> None:
    rules = {rule["name"]["as"] for rule in adapter_rules()}
    hpa = {m["pods"]["metric"]["name"] for m in one("HorizontalPodAutoscaler")["spec"]["metrics"]}
    assert hpa == rules == {"poolctl_busy_fraction", "poolctl_claim_fill_ratio"}
    keda = one("ScaledObject")["spec"]["triggers"]
    assert {t["name"] for t in keda} == {"busy", "backlog"}
    assert all(t["type"] == "prometheus" and float(t["metadata"]["threshold"]) > 0
               for t in keda)


def manifest_metrics() -> dict[str, set[str]]:
    """Every metric a manifest's query or rule names (but the names the adapter makes up),
    with the label names its matchers use."""
    made_up = {rule["name"]["as"] for rule in adapter_rules()}
    texts = [p.read_text() for p in sorted(KUBERNETES.rglob("*.yaml"))]
    texts += [rule["metricsQuery"] + rule["seriesQuery"] for rule in adapter_rules()]
    found: dict[str, set[str]] = {}
    for text in texts:
        for match in re.finditer(r"\b(poolctl_[a-z_]+)(\{[^}]*\})?", text):
            name = match.group(1)
            if name in made_up:
                continue
            labels = set(re.findall(r"([a-z_]+)\s*(?:=~|!=|=)", match.group(2) or ""))
            found.setdefault(name, set()).update(labels - {"namespace", "pod"})
    return found


def scrape(port: int) -> dict[str, list]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        body = resp.read().decode()
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def test_every_metric_a_manifest_names_is_on_a_live_pool(lightning: DevServer,
                                                         start_pool) -> None:
    named = manifest_metrics()
    assert {"poolctl_executors", "poolctl_pool_size", "poolctl_runs_claimed_total",
            "poolctl_claim_demand_total"} <= named.keys()
    pool = start_pool("--size", "2")
    run = wait_run(lightning, lightning.enqueue(plan(job(HELLO_BODY))))
    assert run["state"] == "success"
    got = wait_until(lambda: (s := scrape(pool.port)).get("poolctl_runs_claimed_total")
                     and s["poolctl_runs_claimed_total"][0].value >= 1 and s,
                     "the claimed run in /metrics")
    for name, labels in sorted(named.items()):
        assert name in got, f"{name} is named by a manifest but not in /metrics"
        for label in labels:
            assert all(label in s.labels for s in got[name]), f"{name} has no label {label}"
    states = {s.labels["state"] for s in got["poolctl_executors"]}
    assert {"busy", "reserved"} <= states  # the busy fraction's matcher finds its series
    claimed = got["poolctl_runs_claimed_total"][0].value
    asked = got["poolctl_claim_demand_total"][0].value
    assert 1 <= claimed <= asked  # the fill ratio is a ratio: a run came, never more than asked
    print(f"\nlive /metrics has all {len(named)} metrics the manifests name: "
          f"{', '.join(sorted(named))}; fill ratio so far {claimed:.0f}/{asked:.0f}")
    assert pool.stop() == 0


def test_the_prestop_hook_drains_and_returns_once_the_run_is_reported(
        lightning: DevServer, start_pool, tmp_path: Path) -> None:
    container = pool_container()
    socket_path = container["args"][container["args"].index("--control-socket") + 1]
    hook = container["lifecycle"]["preStop"]["exec"]["command"]
    assert socket_path in hook[-1]  # the hook talks to the socket the pool was given
    local_socket = str(tmp_path / "control.sock")
    pool = start_pool("--size", "1", "--control-socket", local_socket)
    wait_until(lambda: http_get(pool.port, "/readyz")[0] == 200, "the pool to be ready")
    body = "fn(state => new Promise(resolve => setTimeout(() => resolve(state), 3000)));"
    run_id = lightning.enqueue(plan({"id": "job-1", "adaptor": COMMON, "body": body}))
    wait_until(lambda: any(e["event"] == "run:start" for e in lightning.run(run_id)["events"]),
               "the run to start")
    env = dict(os.environ, PATH=f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}")
    command = [part.replace(socket_path, local_socket) for part in hook]
    hook_proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
    wait_until(lambda: http_get(pool.port, "/readyz")[0] == 503, "/readyz to say draining")
    output, _ = hook_proc.communicate(timeout=DEADLINE)
    assert hook_proc.returncode == 0, output
    finished = lightning.run(run_id)
    assert finished["state"] == "success"  # reported before the hook returned
    assert "draining" in output
    started = time.monotonic()
    pool.proc.send_signal(signal.SIGTERM)  # what the kubelet does next
    assert pool.proc.wait(DEADLINE) == 0
    print(f"\npreStop returned after the run's success; SIGTERM then stopped the pool in "
          f"{time.monotonic() - started:.1f}s")


def test_the_manifests_parse_as_yaml_one_object_per_document() -> None:
    for path in sorted(KUBERNETES.rglob("*.yaml")):
        docs = documents(path)
        assert docs and all(isinstance(d, dict) and d.get("kind") for d in docs), path
    assert not (ROOT / "conf" / "kubernetes.yaml").exists()
    assert METRIC.search(yaml.safe_dump(by_kind("ScaledObject")))
