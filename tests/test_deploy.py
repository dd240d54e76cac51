"""The container setup: one image for the API and the worker, and a compose file that brings up the whole system."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def test_compose_brings_up_the_whole_system() -> None:
    services = compose()["services"]
    assert set(services) == {"redis", "postgres", "minio", "minio-bucket", "api", "worker", "flower"}
    assert "--appendonly" in services["redis"]["command"], "Redis keeps its queue across restarts"
    api, worker = services["api"], services["worker"]
    assert worker["image"] == api["image"], "one image for both"
    assert worker["command"] == ["trainserve", "worker"]
    assert api["environment"] == worker["environment"]
    assert api["environment"]["TRAINSERVE_DATABASE_URL"].startswith("postgresql")
    assert api["environment"]["TRAINSERVE_REDIS_URL"] == "redis://redis:6379/0"
    assert api["volumes"] == worker["volumes"], "the API reads the models the workers write"
    # `--scale worker=N` needs a worker without fixed ports or names
    assert "ports" not in worker
    assert "container_name" not in worker
    # Every long-running service comes back by itself, and says when it is healthy.
    for name in ("redis", "postgres", "minio", "api", "worker"):
        assert services[name]["restart"] == "unless-stopped", name
        assert "test" in services[name]["healthcheck"], name
    assert "/readyz" in " ".join(services["api"]["healthcheck"]["test"])
    assert services["worker"]["healthcheck"]["test"] == ["CMD", "trainserve", "worker-ready"]


def test_compose_keeps_the_stores_in_minio_when_asked() -> None:
    services = compose()["services"]
    env = services["api"]["environment"]
    # A shared volume by default; s3:// URLs with the `s3` profile, which starts MinIO and makes its bucket.
    assert env["TRAINSERVE_MODEL_STORE"] == "${TRAINSERVE_MODEL_STORE:-/data/models}"
    assert env["TRAINSERVE_DATASET_STORE"] == "${TRAINSERVE_DATASET_STORE:-/data/datasets}"
    assert env["AWS_ENDPOINT_URL"] == "${AWS_ENDPOINT_URL:-http://minio:9000}"
    assert services["minio"]["profiles"] == services["minio-bucket"]["profiles"] == ["s3"]
    assert "trainserve" in services["minio-bucket"]["command"][0], "the bucket the comment's URLs name"
    assert services["minio-bucket"]["depends_on"] == {"minio": {"condition": "service_healthy"}}
    assert all(port.startswith("127.0.0.1:") for port in services["minio"]["ports"])
    assert "s3" in (ROOT / "Dockerfile").read_text().split("pip install", 1)[1].splitlines()[0], "the image has s3fs"


def test_flower_is_opt_in_password_protected_and_on_loopback_only() -> None:
    flower = compose()["services"]["flower"]
    assert flower["profiles"] == ["monitoring"], "not started by a plain `docker compose up`"
    assert flower["environment"]["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?"), "no start without a password"
    assert all(port.startswith("127.0.0.1:") for port in flower["ports"]), "published on this host's loopback only"
    # Nothing else is published but the API (and, on loopback, the monitors).
    published = {name for name, service in compose()["services"].items() if service.get("ports")}
    assert published == {"api", "flower", "minio"}


def test_dockerfile_is_slim_non_root_and_checks_health() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in text
    user = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert user
    assert user[-1] not in ("root", "0")
    assert "HEALTHCHECK" in text
    assert "/healthz" in text


def test_docker_compose_accepts_the_file() -> None:
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("the docker client with its compose plugin is not installed here")
    result = subprocess.run([docker, "compose", "config", "--quiet"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def kubernetes() -> dict[str, list[dict[str, Any]]]:
    """The example's objects by kind."""
    found: dict[str, list[dict[str, Any]]] = {}
    for path in sorted((ROOT / "deploy" / "k8s").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            found.setdefault(document["kind"], []).append(document)
    return found


def _deployment(name: str) -> dict[str, Any]:
    return next(d for d in kubernetes()["Deployment"] if d["metadata"]["name"] == name)


def test_the_kubernetes_example_scales_without_a_shared_volume() -> None:
    from service.settings import Settings, is_url

    objects = kubernetes()
    assert sorted(objects) == ["ConfigMap", "Deployment", "Service"]
    (config,) = objects["ConfigMap"]
    settings = config["data"]
    # Every setting is one the service reads, and the stores are an object store: no volume to share.
    known = {f"TRAINSERVE_{name.upper()}" for name in Settings.model_fields}
    assert {key for key in settings if key.startswith("TRAINSERVE_")} <= known
    assert is_url(settings["TRAINSERVE_MODEL_STORE"])
    assert is_url(settings["TRAINSERVE_DATASET_STORE"])
    api, worker = _deployment("trainserve-api"), _deployment("trainserve-worker")
    for deployment in (api, worker):
        pod = deployment["spec"]["template"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
        (container,) = pod["spec"]["containers"]
        assert container["image"] == "trainserve:latest"
        sources = {next(iter(ref.values()))["name"] for ref in container["envFrom"]}
        assert sources == {config["metadata"]["name"], "trainserve-secrets"}
        # Each pod's own scratch space only: nothing a second pod would need to mount.
        assert all(set(volume) == {"name", "emptyDir"} for volume in pod["spec"]["volumes"])
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        assert "memory" in container["resources"]["limits"]
    assert api["spec"]["replicas"] >= 2
    assert worker["spec"]["replicas"] >= 2


def test_the_api_is_ready_when_its_database_and_broker_are_and_the_service_finds_it() -> None:
    api = _deployment("trainserve-api")
    (container,) = api["spec"]["template"]["spec"]["containers"]
    port = int(container["args"][container["args"].index("--port") + 1])
    assert container["ports"] == [{"name": "http", "containerPort": port}]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    (service,) = kubernetes()["Service"]
    assert service["spec"]["selector"].items() <= api["spec"]["template"]["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"


def test_workers_take_their_pool_and_stop_gracefully() -> None:
    worker = _deployment("trainserve-worker")
    pod = worker["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"][:2] == ["trainserve", "worker"]
    assert container["args"][container["args"].index("--pool") + 1] == "default"
    assert "ports" not in container, "workers take jobs from Redis; nothing connects to them"
    assert container["livenessProbe"]["exec"]["command"] == ["trainserve", "worker-ready"]
    assert pod["terminationGracePeriodSeconds"] >= 60
