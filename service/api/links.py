"""OpenAPI links between operations: where an answer's ids lead (a job to its events and its model, a model to its
pages and to predicting with it, an upload to its samples). Clients generated from the document, and the
stateful tests, follow them."""

from __future__ import annotations

from typing import Any

from service.api.schemas import DIGIT_ZERO

# FastAPI's operation ids: the function's name, then its path and method.
GET_JOB = "get_job_jobs__job_id__get"
JOB_EVENTS = "job_events_jobs__job_id__events_get"
CANCEL_JOB = "cancel_job_jobs__job_id__cancel_post"
GET_MODEL = "get_model_models__model_id__get"
MODEL_SUMMARY = "get_summary_models__model_id__summary_get"
MODEL_DOWNLOAD = "download_models__model_id__download_get"
PREDICT = "predict_predict_post"
TF_SERVING_STATUS = "model_status_v1_models__name__get"
V2_METADATA = "model_metadata_v2_models__name__get"
GET_DATASET = "get_dataset_datasets__dataset_id__get"
DATASET_SAMPLES = "get_samples_datasets__dataset_id__samples_get"
DELETE_DATASET = "delete_dataset_datasets__dataset_id__delete"


def _to(operation: str, **parameters: str) -> dict[str, Any]:
    return {"operationId": operation, "parameters": parameters}


def of_job(pointer: str) -> dict[str, Any]:
    """From an answer holding a job id at ``pointer`` (a JSON pointer into the body)."""
    job_id = f"$response.body#{pointer}"
    return {
        "GetJob": _to(GET_JOB, job_id=job_id),
        "FollowJob": _to(JOB_EVENTS, job_id=job_id),
        "CancelJob": _to(CANCEL_JOB, job_id=job_id),
    }


def of_model(model_id_pointer: str, name_pointer: str) -> dict[str, Any]:
    """From an answer holding a model's id and name."""
    model_id = f"$response.body#{model_id_pointer}"
    name = f"$response.body#{name_pointer}"
    return {
        "GetModel": _to(GET_MODEL, model_id=model_id),
        "GetSummary": _to(MODEL_SUMMARY, model_id=model_id),
        "Download": _to(MODEL_DOWNLOAD, model_id=model_id),
        "Predict": {
            "operationId": PREDICT,
            "requestBody": {"model_id": model_id, "instances": [DIGIT_ZERO]},
        },
        "TensorFlowServingStatus": _to(TF_SERVING_STATUS, name=name),
        "OpenInferenceMetadata": _to(V2_METADATA, name=name),
    }


def of_dataset(pointer: str) -> dict[str, Any]:
    dataset_id = f"$response.body#{pointer}"
    return {
        "GetDataset": _to(GET_DATASET, dataset_id=dataset_id),
        "GetSamples": _to(DATASET_SAMPLES, dataset_id=dataset_id),
        "DeleteDataset": _to(DELETE_DATASET, dataset_id=dataset_id),
    }
