"""The Python client of a running TrainServe.

>>> from trainserve import Client
>>> client = Client()                       # TRAINSERVE_URL, else http://127.0.0.1:8000
>>> job = client.train(model, dataset={"name": "digits", "rescale": 1 / 16}, epochs=5)
>>> job.wait()                              # a live progress bar, then the history as a table
>>> job.plot()                              # the curves, with matplotlib
>>> job.model.predict(x)                    # NumPy in, NumPy out
>>> keras_model = job.model.download()      # the trained keras.Model

``model`` is a ``keras.Sequential`` built from the layers the service supports (or a request dict, as
``examples/*.json``): it is turned into the request on this side, from its ``get_config()``
(``trainserve.convert``). Importing this package loads neither TensorFlow nor Keras: only a Keras model given to
it, or ``download()``, does.
"""

from __future__ import annotations

from trainserve.client import Client
from trainserve.errors import (
    AuthenticationError,
    ConflictError,
    ExperimentEndedError,
    IntegrityError,
    InvalidRequestError,
    JobCancelledError,
    JobEndedError,
    JobFailedError,
    NotFoundError,
    Problem,
    ServiceError,
    TrainServeError,
    UnreachableError,
    UnsupportedKerasError,
    WaitTimeoutError,
)
from trainserve.experiments import Experiment, Experiments, Leaderboard
from trainserve.jobs import History, Job
from trainserve.models import Model, Predictions, Summary

__all__ = [
    "AuthenticationError",
    "Client",
    "ConflictError",
    "Experiment",
    "ExperimentEndedError",
    "Experiments",
    "History",
    "IntegrityError",
    "InvalidRequestError",
    "Job",
    "JobCancelledError",
    "JobEndedError",
    "JobFailedError",
    "Leaderboard",
    "Model",
    "NotFoundError",
    "Predictions",
    "Problem",
    "ServiceError",
    "Summary",
    "TrainServeError",
    "UnreachableError",
    "UnsupportedKerasError",
    "WaitTimeoutError",
]
