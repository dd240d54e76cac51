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
    assert set(services) == {"redis", "postgres", "api", "worker", "flower"}
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


def test_flower_is_opt_in_password_protected_and_on_loopback_only() -> None:
    flower = compose()["services"]["flower"]
    assert flower["profiles"] == ["monitoring"], "not started by a plain `docker compose up`"
    assert flower["environment"]["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?"), "no start without a password"
    assert all(port.startswith("127.0.0.1:") for port in flower["ports"]), "published on this host's loopback only"
    # Nothing else is published but the API.
    published = {name for name, service in compose()["services"].items() if service.get("ports")}
    assert published == {"api", "flower"}


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
