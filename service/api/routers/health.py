"""Liveness and readiness."""

from __future__ import annotations

import redis
from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy import text

from service.api.deps import SessionDep, SettingsDep
from service.api.schemas import Health

router = APIRouter(tags=["health"])


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


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
async def readyz(session: SessionDep, settings: SettingsDep) -> Health | JSONResponse:
    """The database and the broker answer; 503 otherwise, with what failed."""
    checks: dict[str, str] = {}
    try:
        await run_in_threadpool(session.execute, text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unreachable: {exc}"
    checks["broker"] = await run_in_threadpool(_check_broker, settings.redis_url)
    if all(v == "ok" for v in checks.values()):
        return Health(status="ready", checks=checks)
    return JSONResponse(Health(status="unavailable", checks=checks).model_dump(), status_code=503)
