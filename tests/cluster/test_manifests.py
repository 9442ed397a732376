"""Everything in clusters/ parses and agrees with the code: the Ray version the image, the cluster
YAMLs and the KubeRay manifests name is the pinned one; entrypoints are real `ray-amalgam` commands
with specs that validate; custom node resources that specs ask for are declared by every cluster."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from ray_amalgam.cli.main import build_parser
from ray_amalgam.cli.submit import detect_spec
from ray_amalgam.spec import JobSpec, load_spec_text
from ray_amalgam.spec.sweep import SweepSpec

ROOT = Path(__file__).resolve().parents[2]
CLUSTERS = ROOT / "clusters"
LAUNCHER = ["aws.yaml", "gcp.yaml"]
KUBERAY = ["kuberay-raycluster.yaml", "kuberay-rayjob.yaml", "kuberay-rayjob-sweep.yaml"]


def _ray_pin() -> SpecifierSet:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (ray_requirement,) = [d for d in dependencies if d.startswith("ray[")]
    return SpecifierSet(ray_requirement.split("]", 1)[1])


def _documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((CLUSTERS / name).read_text()) if d]


def _cluster_specs(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The RayCluster specs in a KubeRay manifest (a RayCluster's own, or a RayJob's rayClusterSpec)."""
    if manifest["kind"] == "RayCluster":
        return [manifest["spec"]]
    if manifest["kind"] == "RayJob":
        return [manifest["spec"]["rayClusterSpec"]]
    return []


def _declared(name: str) -> set[str]:
    """Custom node resources a cluster definition declares (aws/gcp node types, KubeRay groups)."""
    declared: set[str] = set()
    if name in LAUNCHER:
        for node_type in _documents(name)[0]["available_node_types"].values():
            declared |= {k for k in node_type.get("resources", {}) if k not in ("CPU", "GPU", "memory")}
        return declared
    for manifest in _documents(name):
        for spec in _cluster_specs(manifest):
            for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
                text = group.get("rayStartParams", {}).get("resources")
                if text:  # KubeRay passes it to `ray start --resources` as a quoted JSON string
                    declared |= set(json.loads(text.strip('"').replace('\\"', '"')))
    return declared


def _example_specs() -> list[tuple[str, JobSpec | SweepSpec]]:
    """clusters/job.yaml, clusters/sweep.yaml and every spec embedded in a KubeRay ConfigMap."""
    specs = [(str(CLUSTERS / n), detect_spec(str(CLUSTERS / n))[1]) for n in ("job.yaml", "sweep.yaml")]
    for name in KUBERAY:
        for manifest in _documents(name):
            if manifest["kind"] == "ConfigMap":
                for key, text in manifest["data"].items():
                    model = SweepSpec if "base" in yaml.safe_load(text) else JobSpec
                    specs.append((f"{name}: {key}", load_spec_text(model, text, f"{name}: {key}")))
    return specs


def test_the_pinned_ray_is_the_one_every_cluster_runs():
    pin = _ray_pin()
    assert Version(ray.__version__) in pin
    (image,) = re.findall(r"^FROM\s+(\S+)", (CLUSTERS / "Dockerfile").read_text(), flags=re.MULTILINE)
    repository, tag = image.split(":")
    assert repository == "rayproject/ray" and tag.endswith("-gpu"), image
    image_version = Version(tag.split("-")[0])
    assert image_version in pin and image_version.release[:2] == Version(ray.__version__).release[:2]
    for name in KUBERAY:
        for manifest in _documents(name):
            for spec in _cluster_specs(manifest):
                assert Version(spec["rayVersion"]) == image_version, name
    for name in LAUNCHER:
        assert _documents(name)[0]["docker"]["image"].endswith("/ray-amalgam:0.1.0")  # the image clusters/Dockerfile builds


def test_heads_run_no_tasks_and_every_cluster_requires_a_token():
    for name in LAUNCHER:
        cluster = _documents(name)[0]
        head = cluster["available_node_types"][cluster["head_node_type"]]
        assert head["resources"] == {"CPU": 0, "GPU": 0}, name
        assert "--env RAY_AUTH_MODE=token" in cluster["docker"]["run_options"], name
        assert "~/.ray/auth_token" in cluster["file_mounts"], name
        assert any(n.get("min_workers") == 0 and n["resources"].get("GPU") for n in cluster["available_node_types"].values())
    for name in KUBERAY:
        for manifest in _documents(name):
            for spec in _cluster_specs(manifest):
                assert spec["authOptions"] == {"mode": "token"}, name
                assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", name


def test_entrypoints_are_real_commands_whose_specs_validate():
    parser = build_parser()
    entrypoints = 0
    for name in KUBERAY:
        documents = _documents(name)
        config_maps = {d["metadata"]["name"]: d["data"] for d in documents if d["kind"] == "ConfigMap"}
        for manifest in documents:
            if manifest["kind"] != "RayJob":
                continue
            words = shlex.split(manifest["spec"]["entrypoint"])
            assert words[0] == "ray-amalgam"
            args = parser.parse_args(words[1:])  # a subcommand and flags the CLI really has
            assert args.command in ("run", "sweep") and args.address == "auto"
            head = manifest["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
            mounts = {m["name"]: m["mountPath"] for m in head["containers"][0]["volumeMounts"]}
            volumes = {v["name"]: v["configMap"]["name"] for v in head["volumes"] if "configMap" in v}
            spec_path = getattr(args, "job", None) or args.sweep
            (volume,) = [v for v, path in mounts.items() if spec_path.startswith(path + "/")]
            text = config_maps[volumes[volume]][spec_path.rsplit("/", 1)[1]]
            model = JobSpec if args.command == "run" else SweepSpec
            load_spec_text(model, text, f"{name}: {spec_path}")  # raises, naming the field, if it does not validate
            entrypoints += 1
    assert entrypoints == 2


@pytest.mark.parametrize("cluster", LAUNCHER + KUBERAY)
def test_custom_resources_the_specs_ask_for_are_declared(cluster):
    declared = _declared(cluster)
    assert declared, f"{cluster} declares no custom resource"
    for source, spec in _example_specs():
        job = spec.base if isinstance(spec, SweepSpec) else spec
        asked = set(job.resources.worker_resources) | set(job.resources.teacher_resources)
        assert asked, f"{source} pins nothing"
        assert asked <= declared, f"{source} asks for {sorted(asked - declared)}, which {cluster} does not declare"


def test_readme_commands_exist():
    """Every `ray-amalgam ...` line in clusters/README.md parses with the real CLI parser."""
    parser = build_parser()
    lines = [line.strip() for line in (CLUSTERS / "README.md").read_text().splitlines() if line.strip().startswith("ray-amalgam ")]
    assert len(lines) >= 5
    for line in lines:
        words = shlex.split(line.split(" #", 1)[0].rstrip("\\ "))
        parser.parse_args([w for w in words[1:] if w != "\\"])
