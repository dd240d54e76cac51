"""Experiments: a search over a train request's fields, its trials ordinary jobs on the queue, its sampling and
pruning Optuna's.

Each experiment is an Optuna study in Optuna's RDB storage on the service's own database URL, so every API replica
and worker shares it. The study is advanced by whichever process has something new to tell it: the API when the
experiment is submitted or cancelled, the worker that has just ended one of its trials, and a periodic task as a
safety net. Advancing tells the study how each ended trial did, asks it for new trials while fewer than
``max_parallel`` are queued or running, checks each one (its request must validate and its model dry-build), and
queues it as a job or records it refused. One process advances an experiment at a time (a lease on its row); a
request to advance that arrives meanwhile is counted, so the holder goes round once more.

No HTTP here: refusals are ``submit.InvalidRequestError`` with the JSON path of each problem.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ValidationError
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from service import jobs, registry
from service.datasets import catalogue
from service.db import (
    FINISHED_STATUSES,
    ExperimentRow,
    ExperimentStatus,
    JobRow,
    JobStatus,
    ModelRow,
    new_id,
    session_scope,
    utcnow,
)
from service.queue import JobQueue
from service.settings import Settings
from service.spec import TrainRequest
from service.spec.base import format_path
from service.spec.experiment import ChoiceSpace, ExperimentRequest, FloatSpace, IntSpace, Loc, with_values
from service.submit import IdempotencyConflictError, InvalidRequestError, check_build, check_limits

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

# How long one process may hold an experiment while advancing it before another may take over.
ADVANCE_LEASE = timedelta(seconds=60)
# Refusals listed at submit before the rest are summed up: a space of a thousand bad trials is one answer.
MAX_PROBLEMS = 20
STOP_PRUNED = "pruned"


# --- Optuna -------------------------------------------------------------------------------------------------------


@functools.cache
def _storage(url: str, pid: int) -> optuna.storages.RDBStorage:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    engine: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        engine = {"connect_args": {"timeout": 30}}
    return optuna.storages.RDBStorage(url, engine_kwargs=engine)


def storage(url: str) -> optuna.storages.RDBStorage:
    """Optuna's storage on the database at ``url``, one per process (an engine must not cross a fork)."""
    return _storage(url, os.getpid())


def _primitive(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


def encoded_choices(space: ChoiceSpace) -> list[Any]:
    """A choice's values as Optuna keeps categories: as they are when they are plain values, else each as JSON."""
    if all(_primitive(value) for value in space.values):
        return list(space.values)
    return [json.dumps(value, sort_keys=True, separators=(",", ":")) for value in space.values]


def encoded(space: ChoiceSpace | IntSpace | FloatSpace, value: Any) -> Any:
    if isinstance(space, ChoiceSpace) and not all(_primitive(v) for v in space.values):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return value


def decoded(space: ChoiceSpace | IntSpace | FloatSpace, value: Any) -> Any:
    if isinstance(space, ChoiceSpace) and not all(_primitive(v) for v in space.values):
        return json.loads(value)
    return value


def distributions(request: ExperimentRequest) -> dict[str, optuna.distributions.BaseDistribution]:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, optuna.distributions.BaseDistribution] = {}
    for path, space in request.space.items():
        if isinstance(space, ChoiceSpace):
            out[path] = CategoricalDistribution(encoded_choices(space))
        elif isinstance(space, IntSpace):
            out[path] = IntDistribution(space.low, space.high, step=space.step, log=space.log)
        else:
            out[path] = FloatDistribution(space.low, space.high, step=space.step, log=space.log)
    return out


def sampler(request: ExperimentRequest, asked: int) -> optuna.samplers.BaseSampler:
    """The request's sampler. Optuna keeps no sampler in its storage: each process makes its own for each round,
    its seed moved on by the trials asked so far, so that a seeded search draws new trials, the same ones every
    time, whichever process asks."""
    import optuna

    seed = request.search.seed
    moved = None if seed is None else seed + asked
    if request.search.type in ("grid", "random"):
        # A grid's trials are all enqueued when its study is made (Optuna's GridSampler stops the study when its
        # grid is done, which only an optimize() loop can take): the sampler never draws one.
        return optuna.samplers.RandomSampler(seed=moved)
    return optuna.samplers.TPESampler(seed=moved, constant_liar=True)


def pruner(request: ExperimentRequest) -> optuna.pruners.BasePruner:
    import optuna

    spec = request.pruner
    if spec is None:
        return optuna.pruners.NopPruner()
    if spec.type == "median":
        # Trials report their epochs as steps 1, 2, 3…; Optuna never prunes at a step below n_warmup_steps.
        return optuna.pruners.MedianPruner(
            n_startup_trials=spec.n_startup_trials, n_warmup_steps=spec.n_warmup_steps + 1
        )
    if spec.type == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=spec.min_resource, reduction_factor=spec.reduction_factor
        )
    return optuna.pruners.HyperbandPruner(
        min_resource=spec.min_resource, max_resource=request.base.fit.epochs, reduction_factor=spec.reduction_factor
    )


def study(row: ExperimentRow, request: ExperimentRequest, url: str) -> optuna.Study:
    import optuna

    return optuna.load_study(
        study_name=row.study_name,
        storage=storage(url),
        sampler=sampler(request, row.trials_asked),
        pruner=pruner(request),
    )


def direction(request: ExperimentRequest) -> Literal["maximize", "minimize"]:
    return "maximize" if request.objective.direction == "max" else "minimize"


# --- trials -------------------------------------------------------------------------------------------------------


def monitored(request: ExperimentRequest, trial: TrainRequest) -> str:
    """What the pruner watches each epoch: the objective's metric as the history logs it."""
    metric = request.objective.metric
    if request.objective.source != "evaluation":
        return metric
    return f"val_{metric}" if trial.has_validation else metric


def _space_path(request: ExperimentRequest, loc: Sequence[str | int]) -> Loc:
    """The space path an error in a trial's request falls under (the longest that leads to it), else the base's."""
    best: tuple[str, Loc] | None = None
    for path, steps in request.paths:
        if tuple(loc[: len(steps)]) == steps and (best is None or len(steps) > len(best[1])):
            best = (path, steps)
    if best is not None:
        return ("space", best[0])
    return ("base", *loc)


def _json_loc(loc: Sequence[str | int], body: Any) -> Loc:
    """A Pydantic error's location as a path through the request's own JSON: without the union tags and validator
    names Pydantic puts between its fields (``model.layers.1.dense.units`` is ``model.layers[1].units``)."""
    out: list[str | int] = []
    node = body
    for part in loc:
        in_dict = isinstance(node, dict) and isinstance(part, str) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if in_dict or in_list:
            node = node[part]
        elif isinstance(node, dict | list):
            continue  # a tag or a validator's name, not a field of the request
        else:
            node = None
        out.append(part)
    return tuple(out)


def _values_text(values: dict[str, Any]) -> str:
    return ", ".join(f"{path} = {json.dumps(value, ensure_ascii=False)}" for path, value in values.items())


def trial_request(request: ExperimentRequest, values: dict[str, Any], number: int, name: str) -> TrainRequest:
    """The base request with the trial's values; refused with the space path and the values that made it
    invalid."""
    base = request.base.model_dump(mode="json")
    try:
        body = with_values(base, request.paths, values)
    except KeyError as missing:
        path = str(missing.args[0])
        raise InvalidRequestError(
            [(("space", path), f"with {_values_text(values)}: the request has no field {path}")]
        ) from None
    body["name"] = f"{name} · trial {number}"
    try:
        trial = TrainRequest.model_validate(body)
    except ValidationError as exc:
        problems = []
        for error in exc.errors()[:MAX_PROBLEMS]:
            loc = _json_loc(error["loc"], body)
            problems.append(
                (_space_path(request, loc), f"with {_values_text(values)}: {format_path(loc)}: {error['msg']}")
            )
        raise InvalidRequestError(problems) from None
    found = trial.problems()
    if found:
        raise InvalidRequestError(
            [(_space_path(request, loc), f"with {_values_text(values)}: {message}") for loc, message in found]
        )
    return trial


def check_trial(
    request: ExperimentRequest, trial: TrainRequest, values: dict[str, Any], session: Session, settings: Settings
) -> None:
    """What a trial must be to run: within the service's limits, a model Keras builds on its dataset, and an
    objective (and pruner) its fit reports."""
    try:
        check_limits(trial, settings)
        check_build(trial, session, settings)
    except InvalidRequestError as exc:
        raise InvalidRequestError(
            [(_space_path(request, loc), f"with {_values_text(values)}: {message}") for loc, message in exc.problems]
        ) from None
    objective = request.objective
    problems: list[tuple[Loc, str]] = []
    if objective.source == "evaluation":
        evaluated = ("loss", *trial.compile.metrics)
        if objective.metric not in evaluated:
            problems.append(
                (
                    ("objective", "metric"),
                    f"the held-out evaluation reports {', '.join(evaluated)}; not {objective.metric!r}",
                )
            )
        info = catalogue.dataset_info(session=session, spec=trial.dataset)
        if trial.dataset.test_size is None and info.test_rows == 0:
            problems.append(
                (
                    ("objective", "source"),
                    "the held-out evaluation needs a test split: give base.dataset.test_size, or take the "
                    "objective from 'last_epoch' or 'best_epoch'",
                )
            )
    elif objective.metric not in trial.logged():
        problems.append(
            (("objective", "metric"), f"the fit logs {', '.join(trial.logged())}; not {objective.metric!r}")
        )
    if request.pruner is not None and monitored(request, trial) not in trial.logged():
        problems.append((("pruner",), f"the pruner watches {monitored(request, trial)!r}, which the fit does not log"))
    if problems:
        raise InvalidRequestError(problems)


def every_trial(request: ExperimentRequest) -> Iterator[dict[str, Any]]:
    """Each distinct trial of a finite space, as decoded values by path."""
    paths = list(request.space)
    grids = [request.space[path].grid() for path in paths]
    for combination in itertools.product(*grids):
        yield dict(zip(paths, combination, strict=True))


# --- submit -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Created:
    experiment_id: str
    status: ExperimentStatus
    trials: int
    checked: int
    replayed: bool = False


def experiment_hash(request: ExperimentRequest) -> str:
    canonical = json.dumps(request.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def create_experiment(
    request: ExperimentRequest,
    *,
    session: Session,
    settings: Settings,
    queue: JobQueue,
    idempotency_key: str | None = None,
) -> Created:
    """Check the experiment (every trial of a small space; the base and each later trial of a large one), record
    it with its study, and queue its first trials. Blocking."""
    import optuna

    digest = experiment_hash(request)
    if idempotency_key is not None:
        earlier = session.scalar(select(ExperimentRow).where(ExperimentRow.idempotency_key == idempotency_key))
        if earlier is not None:
            if earlier.request_sha256 != digest:
                raise IdempotencyConflictError(idempotency_key, earlier.id)
            return Created(earlier.id, ExperimentStatus(earlier.status), earlier.trials_asked, 0, replayed=True)
    problems = request.problems()
    wanted = request.trials_wanted()
    if wanted > settings.max_experiment_trials:
        problems.append(
            (
                ("max_trials",),
                f"{wanted} trials is more than this service allows: at most {settings.max_experiment_trials} "
                "(TRAINSERVE_MAX_EXPERIMENT_TRIALS)",
            )
        )
    if problems:
        raise InvalidRequestError(problems)
    try:
        check_limits(request.base, settings)
        check_build(request.base, session, settings)
    except InvalidRequestError as exc:
        raise InvalidRequestError([(("base", *loc), message) for loc, message in exc.problems]) from None
    experiment_id = new_id()
    name = request.name or f"experiment-{experiment_id[:8]}"
    size = request.size()
    checked = 0
    if size is not None and size <= settings.experiment_check_limit:
        for values in every_trial(request):
            try:
                check_trial(request, trial_request(request, values, 0, name), values, session, settings)
            except InvalidRequestError as exc:
                problems.extend(exc.problems)
                if len(problems) >= MAX_PROBLEMS:
                    break
            checked += 1
        if problems:
            raise InvalidRequestError(problems[:MAX_PROBLEMS])
    row = ExperimentRow(
        id=experiment_id,
        name=name,
        status=ExperimentStatus.RUNNING,
        spec=request.model_dump(mode="json"),
        study_name=f"trainserve-{experiment_id}",
        idempotency_key=idempotency_key,
        request_sha256=digest,
    )
    created = optuna.create_study(
        storage=storage(settings.database_url), study_name=row.study_name, direction=direction(request)
    )
    first = list(request.enqueue)
    if request.search.type == "grid":
        first += list(itertools.islice(every_trial(request), request.trials_wanted()))
    for values in first:
        created.enqueue_trial(
            {path: encoded(request.space[path], value) for path, value in values.items()}, skip_if_exists=True
        )
    session.add(row)
    session.commit()
    advance(settings, queue, experiment_id)
    return Created(experiment_id, ExperimentStatus.RUNNING, wanted, checked)


# --- advancing ----------------------------------------------------------------------------------------------------


def advance(settings: Settings, queue: JobQueue, experiment_id: str) -> None:
    """Bring the experiment up to date (see the module's docstring); returns at once when another process is at
    it, which then goes round once more for this call."""
    url = settings.database_url
    with session_scope(url) as session:
        session.execute(
            update(ExperimentRow).where(ExperimentRow.id == experiment_id).values(wakeups=ExperimentRow.wakeups + 1)
        )
    while True:
        now = utcnow()
        with session_scope(url) as session:
            taken = session.execute(
                update(ExperimentRow)
                .where(
                    ExperimentRow.id == experiment_id,
                    (ExperimentRow.advancing_until.is_(None)) | (ExperimentRow.advancing_until < now),
                )
                .values(advancing_until=now + ADVANCE_LEASE)
            )
            if not jobs.changed(taken):
                return
            seen = session.scalar(select(ExperimentRow.wakeups).where(ExperimentRow.id == experiment_id))
        try:
            _step(settings, queue, experiment_id)
        finally:
            with session_scope(url) as session:
                released = session.execute(
                    update(ExperimentRow)
                    .where(ExperimentRow.id == experiment_id, ExperimentRow.wakeups == seen)
                    .values(advancing_until=None)
                )
                again = not jobs.changed(released)
                if again:
                    session.execute(
                        update(ExperimentRow).where(ExperimentRow.id == experiment_id).values(advancing_until=None)
                    )
        if not again:
            return


def objective_value(request: ExperimentRequest, job: JobRow, history: list[dict[str, Any]]) -> float | None:
    """The trial's objective: from the published model's held-out evaluation, or its history's last or best
    epoch. None when the job did not succeed or the number is not finite."""
    if job.status != JobStatus.SUCCEEDED:
        return None
    metric = request.objective.metric
    value: Any
    if request.objective.source == "evaluation":
        value = (job.evaluation or {}).get(metric)
    elif request.objective.source == "last_epoch":
        value = history[-1].get(metric) if history else None
    else:
        values = [row[metric] for row in history if row.get(metric) is not None]
        choose = max if request.objective.direction == "max" else min
        value = choose(values) if values else None
    return float(value) if isinstance(value, int | float) else None


def was_pruned(job: JobRow) -> bool:
    return str((job.training or {}).get("stop_reason") or "").startswith(STOP_PRUNED)


def trial_jobs(session: Session, experiment_id: str) -> list[JobRow]:
    return list(
        session.scalars(select(JobRow).where(JobRow.experiment_id == experiment_id).order_by(JobRow.trial_number))
    )


def trial_histories(
    session: Session, request: ExperimentRequest, trials: Sequence[JobRow]
) -> dict[str, list[dict[str, Any]]]:
    """What each trial's objective and progress need of its history, and no more: every epoch of the finished
    trials when the objective is the best epoch's, else each trial's last epoch alone (an experiment of a thousand
    trials of a hundred epochs is read a thousand rows at a time)."""
    ids = [job.id for job in trials]
    history = jobs.last_epochs(session=session, job_ids=ids)
    if request.objective.source == "best_epoch":
        finished = [job.id for job in trials if job.status == JobStatus.SUCCEEDED]
        history.update(jobs.job_history(session=session, job_ids=finished))
    return history


def best_trial(request: ExperimentRequest, trials: Sequence[JobRow], history: dict[str, Any]) -> JobRow | None:
    """The finished, unpruned trial with the best objective (the earliest of equals)."""
    scored = [
        (value, job)
        for job in trials
        if not was_pruned(job) and (value := objective_value(request, job, history[job.id])) is not None
    ]
    if not scored:
        return None
    sign = -1 if request.objective.direction == "max" else 1
    return min(scored, key=lambda item: (sign * item[0], item[1].trial_number or 0))[1]


def _step(settings: Settings, queue: JobQueue, experiment_id: str) -> None:
    from optuna.trial import TrialState

    url = settings.database_url
    with session_scope(url) as session:
        row = session.get(ExperimentRow, experiment_id)
        if row is None or row.status != ExperimentStatus.RUNNING:
            return
        request = ExperimentRequest.model_validate(row.spec)
        the_study = study(row, request, url)
        trials = trial_jobs(session, experiment_id)
        history = trial_histories(session, request, trials)
        by_number = {job.trial_number: job for job in trials}
        for frozen in the_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            job = by_number.get(frozen.number)
            if job is None:
                # Asked, but its job was never recorded (the asking process died in between).
                the_study.tell(frozen.number, state=TrialState.FAIL, skip_if_finished=True)
            elif job.status in FINISHED_STATUSES:
                value = objective_value(request, job, history[job.id])
                if was_pruned(job):
                    the_study.tell(frozen.number, state=TrialState.PRUNED, skip_if_finished=True)
                elif value is None:
                    the_study.tell(frozen.number, state=TrialState.FAIL, skip_if_finished=True)
                else:
                    the_study.tell(frozen.number, value, skip_if_finished=True)
        best = best_trial(request, trials, history)
        row.best_job_id = None if best is None else best.id
        active = [job for job in trials if job.status not in FINISHED_STATUSES]
        if row.cancel_requested:
            for job in active:
                jobs.request_cancel(session=session, job_id=job.id)
            session.flush()
            still = session.scalar(
                select(func.count())
                .select_from(JobRow)
                .where(JobRow.experiment_id == experiment_id, JobRow.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]))
            )
            if not still:
                row.status, row.finished_at = ExperimentStatus.CANCELLED, utcnow()
            return
        wanted = request.trials_wanted()
        room = request.max_parallel - len(active)
        left = wanted - row.trials_asked
        name = row.name
    while room > 0 and left > 0:
        left -= 1
        if _ask(settings, queue, experiment_id, request, name):
            room -= 1  # a refused trial takes no slot
    with session_scope(url) as session:
        row = session.get(ExperimentRow, experiment_id)
        assert row is not None
        trials = trial_jobs(session, experiment_id)
        if row.trials_asked < wanted or any(job.status not in FINISHED_STATUSES for job in trials):
            return
        history = trial_histories(session, request, trials)
        best = best_trial(request, trials, history)
        row.finished_at = utcnow()
        if best is None:
            row.status = ExperimentStatus.FAILED
            row.error_message = "no trial ended with an objective value"
            return
        row.status, row.best_job_id = ExperimentStatus.SUCCEEDED, best.id
        if request.publish and best.model_id is not None:
            row.published_model_id = publish_best(session, best.model_id, row.name, settings)


def _ask(settings: Settings, queue: JobQueue, experiment_id: str, request: ExperimentRequest, name: str) -> bool:
    """Ask the study for one trial and queue it (True), or record it refused."""
    from optuna.trial import TrialState

    url = settings.database_url
    with session_scope(url) as session:
        row = session.get(ExperimentRow, experiment_id)
        assert row is not None
        the_study = study(row, request, url)
        trial = the_study.ask(distributions(request))
        values = {path: decoded(request.space[path], trial.params[path]) for path in request.space}
        number = trial.number
        job: JobRow | None = None
        refusal: str | None = None
        try:
            train = trial_request(request, values, number, name)
            check_trial(request, train, values, session, settings)
        except InvalidRequestError as exc:
            refusal = "; ".join(f"{format_path(loc)}: {message}" for loc, message in exc.problems)
            train = None
        if train is not None:
            job = jobs.create_job(session=session, request=train)
        else:
            body = request.base.model_dump(mode="json")
            job = JobRow(
                name=f"{name} · trial {number}",
                status=JobStatus.FAILED,
                spec=body,
                epochs=request.base.fit.epochs,
                finished_at=utcnow(),
                error_type="RefusedTrial",
                error_message=refusal,
            )
            session.add(job)
        job.experiment_id, job.trial_number, job.trial_params = experiment_id, number, values
        row.trials_asked += 1
        session.flush()
        job_id, pool = job.id, job.pool
    if refusal is not None:
        log.warning("experiment %s: trial %d refused: %s", experiment_id, number, refusal)
        the_study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
        return False
    try:
        queue.send(job_id, pool)
    except Exception:
        log.exception("experiment %s: trial %d not queued now; the reconciler sends it again", experiment_id, number)
        return True
    with session_scope(url) as session:
        jobs.mark_dispatched(session=session, job_id=job_id)
    return True


def publish_best(session: Session, model_id: str, name: str, settings: Settings) -> str | None:
    """The best trial's model, published as the next version of the experiment's name: another record of the same
    files (stored again under its own id, hard-linked in a local store, so each record's files are its own)."""
    from service.exports import link_exports
    from service.store import litert_key, model_key, model_store

    source = registry.get_model(session=session, model_id=model_id)
    if source is None:
        return None
    copy_id = new_id()
    store = model_store(settings)
    try:
        store.copy(model_key(model_id), model_key(copy_id))
    except FileNotFoundError:
        log.warning("model %s is missing from the store: not published under %r", model_id, name)
        return None
    litert = source.litert
    if litert is not None and "sha256" in litert:
        try:
            store.copy(litert_key(model_id), litert_key(copy_id))
        except FileNotFoundError:
            litert = {"error": "the trial's flatbuffer is missing from the store"}
    linked = link_exports(store, model_id, copy_id, source.exports)
    copy = ModelRow(
        id=copy_id,
        name=name,
        job_id=source.job_id,
        spec=source.spec,
        dataset=source.dataset,
        input_shape=source.input_shape,
        class_names=source.class_names,
        metrics=source.metrics,
        evaluation=source.evaluation,
        summary=source.summary,
        keras_names=source.keras_names,
        path=model_key(copy_id),
        sha256=source.sha256,
        size_bytes=source.size_bytes,
        litert=litert,
        exports=linked,
        text=source.text,
    )
    registry.add_version(session=session, model=copy)
    return copy_id


# --- cancel, list -------------------------------------------------------------------------------------------------


def request_cancel(settings: Settings, queue: JobQueue, experiment_id: str) -> ExperimentRow | None:
    """Ask no more trials, cancel the queued ones and stop the running ones; the experiment is `cancelled` once
    none runs."""
    with session_scope(settings.database_url) as session:
        row = session.get(ExperimentRow, experiment_id)
        if row is None:
            return None
        if row.status == ExperimentStatus.RUNNING:
            row.cancel_requested = True
    advance(settings, queue, experiment_id)
    with session_scope(settings.database_url) as session:
        return session.get(ExperimentRow, experiment_id)


def list_experiments(
    *, session: Session, status: ExperimentStatus | None, limit: int, offset: int
) -> tuple[Sequence[ExperimentRow], int]:
    query = select(ExperimentRow)
    if status is not None:
        query = query.where(ExperimentRow.status == status)
    count = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(
        query.order_by(ExperimentRow.created_at.desc(), ExperimentRow.id.desc()).limit(limit).offset(offset)
    ).all()
    return rows, count


def stalled_experiments(*, session: Session, before: datetime) -> list[str]:
    """Running experiments that nothing will advance: none of their trials is queued or running (the next to end
    would advance it), none is being advanced, and none has changed since ``before``. An API process that died
    after recording one, a worker that died between a trial's end and advancing its experiment, a trial failed
    by the reconciler: each leaves one of these."""
    active = (
        select(JobRow.id)
        .where(JobRow.experiment_id == ExperimentRow.id, JobRow.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]))
        .exists()
    )
    recent = select(JobRow.id).where(JobRow.experiment_id == ExperimentRow.id, JobRow.finished_at >= before).exists()
    query = select(ExperimentRow.id).where(
        ExperimentRow.status == ExperimentStatus.RUNNING,
        ExperimentRow.created_at < before,
        (ExperimentRow.advancing_until.is_(None)) | (ExperimentRow.advancing_until < before),
        ~active,
        ~recent,
    )
    return list(session.scalars(query))
