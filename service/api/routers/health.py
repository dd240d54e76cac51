"""Liveness and readiness."""

from __future__ import annotations

import logging

import redis
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.orm import Session

from service.api.deps import SessionDep, SettingsDep
from service.api.middleware import AUTHENTICATED
from service.api.schemas import Health

router = APIRouter(tags=["health"])
log = logging.getLogger(__name__)


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The API process is up."""
    return Health(status="ok")


def _check_broker(url: str) -> str:
    if not url:
        return "no broker configured (TRAINSERVE_REDIS_URL)"
    try:
        client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        try:
            client.ping()
        finally:
            client.close()
    except redis.RedisError as exc:
        return f"unreachable: {exc}"
    return "ok"


def _check_database(session: Session) -> str:
    try:
        session.execute(text("SELECT 1"))
    except Exception as exc:
        return f"unreachable: {exc}"
    return "ok"


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
async def readyz(request: Request, session: SessionDep, settings: SettingsDep) -> Health | JSONResponse:
    """The database and the broker answer; 503 otherwise, naming what failed. Why it failed (which may name hosts
    and users) is logged, and told only to a request with a valid API key."""
    checks = {
        "database": await run_in_threadpool(_check_database, session),
        "broker": await run_in_threadpool(_check_broker, settings.redis_url),
    }
    if all(v == "ok" for v in checks.values()):
        return Health(status="ready", checks=checks)
    for name, outcome in checks.items():
        if outcome != "ok":
            log.warning("not ready: %s %s", name, outcome)
    if not request.scope.get(AUTHENTICATED):
        checks = {name: "ok" if outcome == "ok" else "unavailable" for name, outcome in checks.items()}
    return JSONResponse(Health(status="unavailable", checks=checks).model_dump(), status_code=503)
