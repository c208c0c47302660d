"""The autoscalers' PromQL, evaluated by Prometheus' own ``promtool test rules`` on series shaped
like two pools' /metrics: one saturated with a backlog, one mostly idle with empty claims.

The queries are read from the manifests (the adapter's with its placeholders filled in the way
prometheus-adapter fills them for one namespace), so a typo or a wrong ratio fails here.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conf.manifests import adapter_rules, one

PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(PROMTOOL is None,
                                reason="promtool not installed (.ci/run installs it)")

NS = 'namespace="openfn"'
# pool a: 4 of 4 executors busy, every claim filled (1 run asked and got per minute);
# pool b: 1 of 4 busy, its claims empty (4 runs asked for per minute, none came)
SERIES = {
    "a": {"busy": 4, "reserved": 0, "idle": 0, "size": 4, "asked": 1, "got": 1},
    "b": {"busy": 1, "reserved": 0, "idle": 3, "size": 4, "asked": 4, "got": 0},
}


def input_series() -> list[dict[str, str]]:
    out = []
    for pod, s in SERIES.items():
        labels = f'{NS},pod="{pod}"'
        for state in ("busy", "reserved", "idle"):
            out.append({"series": f'poolctl_executors{{{labels},state="{state}"}}',
                        "values": f"{s[state]}+0x10"})
        out += [{"series": f"poolctl_pool_size{{{labels}}}", "values": f"{s['size']}+0x10"},
                {"series": f"poolctl_claim_demand_total{{{labels}}}",
                 "values": f"0+{s['asked']}x10"},
                {"series": f"poolctl_runs_claimed_total{{{labels}}}",
                 "values": f"0+{s['got']}x10"}]
    return out


def adapter_query(metric: str) -> str:
    (rule,) = [r for r in adapter_rules() if r["name"]["as"] == metric]
    return (rule["metricsQuery"].replace("<<.LabelMatchers>>", f'{NS},pod=~"a|b"')
            .replace("<<.GroupBy>>", "pod"))


def keda_query(trigger: str) -> str:
    (found,) = [t for t in one("ScaledObject")["spec"]["triggers"] if t["name"] == trigger]
    return found["metadata"]["query"]


def test_busy_fraction_and_claim_fill_ratio_per_pool_and_for_the_fleet(tmp_path: Path) -> None:
    cases = [
        (adapter_query("poolctl_busy_fraction"), [('{pod="a"}', 1.0), ('{pod="b"}', 0.25)]),
        (adapter_query("poolctl_claim_fill_ratio"), [('{pod="a"}', 1.0), ('{pod="b"}', 0.0)]),
        # KEDA divides by the threshold: busy executors of the fleet / 2.8 per pod
        (keda_query("busy"), [("{}", 5.0)]),
        # fleet fill ratio (1 got of 5 asked) x 2 pools
        (keda_query("backlog"), [("{}", 0.4)]),
    ]
    tests = {"rule_files": [str(tmp_path / "none.yaml")], "evaluation_interval": "1m",
             "tests": [{"interval": "1m", "input_series": input_series(),
                        "promql_expr_test": [
                            {"expr": expr, "eval_time": "6m",
                             "exp_samples": [{"labels": labels, "value": value}
                                             for labels, value in samples]}
                            for expr, samples in cases]}]}
    (tmp_path / "none.yaml").write_text("groups: []\n")
    path = tmp_path / "queries_test.yaml"
    path.write_text(yaml.safe_dump(tests))
    result = subprocess.run([PROMTOOL, "test", "rules", str(path)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    print("\n" + result.stdout.strip())
