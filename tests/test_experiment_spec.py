"""The experiment request on its own: paths, spaces, how trials are made from the base request, and the sampler's
seed, without a worker."""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import ValidationError

from service import experiments
from service.spec.experiment import ExperimentRequest, parse_path, with_values
from service.submit import InvalidRequestError
from tests.conftest import chapter_request


def experiment(space: dict[str, Any], **more: Any) -> ExperimentRequest:
    return ExperimentRequest.model_validate({"base": chapter_request(), "space": space, **more})


def test_a_path_is_names_and_indexes() -> None:
    assert parse_path("model.layers[1].units") == ("model", "layers", 1, "units")
    assert parse_path("fit.batch_size") == ("fit", "batch_size")
    for bad in ("model..layers", "model.layers[x]", "[1].units", "model.", ".model"):
        with pytest.raises(ValidationError):
            experiment({bad: {"type": "choice", "values": [1]}})


def test_values_are_set_shortest_path_first_and_a_named_optimizer_takes_options() -> None:
    request = experiment(
        {
            "compile.optimizer.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
            "compile.optimizer": {"type": "choice", "values": ["adam", {"type": "sgd", "momentum": 0.9}]},
        }
    )
    base = request.base.model_dump(mode="json")
    body = with_values(base, request.paths, {"compile.optimizer": "adam", "compile.optimizer.learning_rate": 0.005})
    assert body["compile"]["optimizer"] == {"type": "adam", "learning_rate": 0.005}
    body = with_values(
        base,
        request.paths,
        {"compile.optimizer": {"type": "sgd", "momentum": 0.9}, "compile.optimizer.learning_rate": 0.001},
    )
    assert body["compile"]["optimizer"] == {"type": "sgd", "momentum": 0.9, "learning_rate": 0.001}
    assert base["compile"]["optimizer"] != body["compile"]["optimizer"], "the base is left as it was"
    with pytest.raises(KeyError, match=r"model.layers\[9\].units"):
        with_values(base, [("model.layers[9].units", ("model", "layers", 9, "units"))], {"model.layers[9].units": 1})


def test_spaces_count_their_trials() -> None:
    request = experiment(
        {
            "model.layers[1].units": {"type": "int", "low": 16, "high": 128, "step": 16},
            "fit.batch_size": {"type": "choice", "values": [16, 32]},
            "compile.optimizer.learning_rate": {"type": "float", "low": 0.001, "high": 0.003, "step": 0.001},
        },
        search={"type": "grid"},
    )
    assert request.size() == 8 * 2 * 3
    assert request.trials_wanted() == 48
    assert request.space["compile.optimizer.learning_rate"].grid() == [0.001, 0.002, 0.003]
    assert experiment({"fit.batch_size": {"type": "int", "low": 8, "high": 64}}, max_trials=5).trials_wanted() == 5
    continuous = experiment({"compile.optimizer.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-1}})
    assert continuous.size() is None
    assert continuous.trials_wanted() == 20


def test_a_space_is_refused_for_what_it_says_wrong() -> None:
    for space, message in (
        ({"type": "choice", "values": [1, 1]}, "each value may appear once"),
        ({"type": "int", "low": 5, "high": 1}, "high (1) is below low (5)"),
        ({"type": "float", "low": 0, "high": 1, "log": True}, "a log scale needs low > 0"),
        ({"type": "float", "low": 0.1, "high": 1, "log": True, "step": 0.1}, "give log or step, not both"),
    ):
        with pytest.raises(ValidationError, match=re.escape(message)):
            experiment({"fit.batch_size": space})
    request = experiment(
        {"fit.batch_size": {"type": "choice", "values": [16, 32]}}, enqueue=[{"fit.batch_size": 64}, {"fit.epochs": 2}]
    )
    assert [loc for loc, _ in request.problems()] == [
        ("enqueue", 0, "fit.batch_size"),
        ("enqueue", 1, "fit.epochs"),
    ]


def test_a_trial_refused_names_the_space_path_and_its_values() -> None:
    request = experiment({"model.layers[1].units": {"type": "choice", "values": [100, 0]}})
    trial = experiments.trial_request(request, {"model.layers[1].units": 100}, 3, "wide")
    assert trial.name == "wide · trial 3"
    assert trial.model.layers[1].units == 100  # type: ignore[union-attr]
    with pytest.raises(InvalidRequestError) as refused:
        experiments.trial_request(request, {"model.layers[1].units": 0}, 4, "wide")
    [(loc, message)] = refused.value.problems
    assert loc == ("space", "model.layers[1].units")
    assert message.startswith("with model.layers[1].units = 0: model.layers[1].units: Input should be greater than")


def test_objects_are_categories_as_json_and_come_back_as_they_were() -> None:
    request = experiment(
        {"compile.optimizer": {"type": "choice", "values": ["adam", {"type": "sgd", "momentum": 0.9}]}}
    )
    space = request.space["compile.optimizer"]
    encoded = experiments.encoded_choices(space)  # type: ignore[arg-type]
    assert encoded == ['"adam"', '{"momentum":0.9,"type":"sgd"}']
    assert [experiments.decoded(space, value) for value in encoded] == space.values  # type: ignore[union-attr]
    plain = experiment({"fit.batch_size": {"type": "choice", "values": [16, 32]}}).space["fit.batch_size"]
    assert experiments.encoded_choices(plain) == [16, 32]  # type: ignore[arg-type]


def test_a_seeded_search_asks_the_same_trials_whichever_process_asks(tmp_path: Any) -> None:
    """Optuna keeps no sampler in its storage: a seeded sampler made afresh for each ask, its seed moved on by the
    trials asked so far, draws new values each time and the same ones in every run."""
    import optuna

    request = experiment(
        {"compile.optimizer.learning_rate": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True}},
        search={"type": "random", "seed": 11},
    )

    def draws(name: str) -> list[float]:
        storage = f"sqlite:///{tmp_path / name}.db"
        optuna.create_study(storage=storage, study_name=name)
        values = []
        for asked in range(4):
            study = optuna.load_study(study_name=name, storage=storage, sampler=experiments.sampler(request, asked))
            trial = study.ask(experiments.distributions(request))
            values.append(trial.params["compile.optimizer.learning_rate"])
        return values

    first, again = draws("one"), draws("two")
    assert first == again
    assert len(set(first)) == 4


def test_each_pruner_is_optunas_own_with_epochs_as_its_steps() -> None:
    import optuna

    def made(pruner: dict[str, Any]) -> Any:
        return experiments.pruner(experiment({"fit.batch_size": {"type": "choice", "values": [16]}}, pruner=pruner))

    assert isinstance(
        experiments.pruner(experiment({"fit.batch_size": {"type": "choice", "values": [16]}})), optuna.pruners.NopPruner
    )
    assert isinstance(made({"type": "median"}), optuna.pruners.MedianPruner)
    assert isinstance(made({"type": "successive_halving", "min_resource": 2}), optuna.pruners.SuccessiveHalvingPruner)
    hyperband = made({"type": "hyperband", "min_resource": 1, "reduction_factor": 3})
    assert isinstance(hyperband, optuna.pruners.HyperbandPruner)
    # The median pruner never stops a trial within its warm-up epochs: epoch 1 here, epochs counted from 1.
    study = optuna.create_study(
        direction="maximize", pruner=made({"type": "median", "n_startup_trials": 1, "n_warmup_steps": 1})
    )
    good = study.ask()
    for epoch in (1, 2):
        good.report(0.9, epoch)
    study.tell(good, 0.9)
    bad = study.ask()
    bad.report(0.1, 1)
    assert not bad.should_prune(), "epoch 1 is the warm-up"
    bad.report(0.1, 2)
    assert bad.should_prune()
