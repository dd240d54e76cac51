"""Model records, names and versions: every published model is version 1, 2, 3… of its name.

A model is found by its id, by its name (the latest version) or by ``name@version``. Ids and ``(name, version)``
pairs never change meaning once published; only "the latest version of a name" moves.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.db import ModelRow

# Versions fit in the databases' 64-bit integers with room to spare; a longer number cannot name one.
_VERSION = "[0-9]{1,15}"
VERSION_PATTERN = f"^{_VERSION}$"
_VERSIONED = re.compile(rf"^(?P<name>.+)@(?P<version>{_VERSION})$")


@dataclass(frozen=True)
class ModelRef:
    """What a request names: a model id, or a name with an optional version (None: the latest)."""

    model_id: str | None = None
    name: str | None = None
    version: int | None = None

    def __str__(self) -> str:
        if self.model_id is not None:
            return self.model_id
        return f"{self.name}@{self.version}" if self.version is not None else str(self.name)


def parse_reference(text: str) -> ModelRef:
    """``"name"`` → the latest version of name; ``"name@3"`` → its version 3."""
    match = _VERSIONED.fullmatch(text)
    if match:
        return ModelRef(name=match["name"], version=int(match["version"]))
    return ModelRef(name=text)


def parse_version(text: str) -> int | None:
    """A version as written in a URL ("3"), or None when the text is not one."""
    return int(text) if re.fullmatch(_VERSION, text) else None


def add_version(*, session: Session, model: ModelRow) -> None:
    """Give ``model`` the next version of its name and add it, in the caller's transaction.

    Two jobs of one name may finish at the same moment. On PostgreSQL a transaction-scoped advisory lock on the
    name makes the second publisher wait until the first has committed, so it reads the number the first one
    took; SQLite lets one writer at a time hold the database (the caller's transaction has already written).
    The unique constraint on (name, version) stands behind both: a clash fails the transaction rather than
    publishing two models under one number.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(func.hashtext(model.name))))
    latest = session.scalar(select(func.max(ModelRow.version)).where(ModelRow.name == model.name))
    model.version = (latest or 0) + 1
    session.add(model)
    session.flush()


def find(*, session: Session, ref: ModelRef) -> ModelRow | None:
    """The model a reference names, or None."""
    if ref.model_id is not None:
        return session.get(ModelRow, ref.model_id)
    query = select(ModelRow).where(ModelRow.name == ref.name)
    if ref.version is not None:
        query = query.where(ModelRow.version == ref.version)
    return session.scalars(query.order_by(ModelRow.version.desc()).limit(1)).first()


def get_model(*, session: Session, model_id: str) -> ModelRow | None:
    return session.get(ModelRow, model_id)


def list_models(
    *, session: Session, limit: int, offset: int, name: str | None = None, version: int | None = None
) -> tuple[Sequence[ModelRow], int]:
    """Models newest first; with ``name``, that name's versions, latest first (only ``version``, when given)."""
    where = []
    if name is not None:
        where.append(ModelRow.name == name)
    if version is not None:
        where.append(ModelRow.version == version)
    count = session.scalar(select(func.count()).select_from(ModelRow).where(*where)) or 0
    rows = session.scalars(
        select(ModelRow)
        .where(*where)
        .order_by(
            *((ModelRow.version.desc(),) if name is not None else ()), ModelRow.created_at.desc(), ModelRow.id.desc()
        )
        .limit(limit)
        .offset(offset)
    ).all()
    return rows, count


def versions(*, session: Session, name: str) -> Sequence[ModelRow]:
    """Every version of a name, newest first."""
    return session.scalars(select(ModelRow).where(ModelRow.name == name).order_by(ModelRow.version.desc())).all()


def record_mlflow(*, session: Session, model_id: str, values: dict[str, Any]) -> None:
    """The model's version in MLflow's registry, or why it has none."""
    model = session.get(ModelRow, model_id)
    if model is not None:
        model.mlflow = values
