"""Reading conf/: every YAML document of the Kubernetes manifests, compose file and unit."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
KUBERNETES = CONF / "kubernetes"
# kinds no API server schema covers: custom resources, and kustomize's own file
CUSTOM_KINDS = {"ScaledObject", "ServiceMonitor", "Kustomization"}
METRIC = re.compile(r"\bpoolctl_[a-z_]+\b")


def documents(path: Path) -> list[dict[str, Any]]:
    with path.open() as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc is not None]


def manifest_files() -> list[Path]:
    return sorted(KUBERNETES.rglob("*.yaml"))


def all_manifests() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in manifest_files() for doc in documents(path)]


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in all_manifests() if doc["kind"] == kind]


def one(kind: str) -> dict[str, Any]:
    (doc,) = by_kind(kind)
    return doc


def adapter_rules() -> list[dict[str, Any]]:
    config = one("ConfigMap")["data"]["config.yaml"]
    return yaml.safe_load(config)["rules"]


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}
