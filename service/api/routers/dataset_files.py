"""An uploaded dataset's stored file, for a script to train on what the service trains on."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import FileResponse

from service.api.deps import SessionDep, SettingsDep
from service.api.errors import ApiError, not_found, responses
from service.api.params import DatasetId
from service.datasets import catalogue
from service.datasets.builtin import BUILTIN_DATASETS
from service.store import StoreError, dataset_store

router = APIRouter(prefix="/datasets", tags=["datasets"])


@router.get(
    "/{dataset_id}/download",
    response_class=FileResponse,
    responses={**responses(404, 409, 500), 200: {"content": {"application/octet-stream": {}}}},
)
def download_dataset(dataset_id: DatasetId, session: SessionDep, settings: SettingsDep) -> FileResponse:
    """The uploaded dataset as the service stores it and jobs train on it: an `.npz` of `x_train`, `y_train` (and
    `x_test`, `y_test`), for `np.load`, as a job's script (`GET /jobs/{job_id}/script`) reads it. A built-in
    dataset is loaded by its own library instead (409)."""
    if dataset_id in BUILTIN_DATASETS:
        raise ApiError(
            409, "builtin_dataset", f"{dataset_id!r} is a built-in dataset; scikit-learn or keras.datasets loads it"
        )
    row = catalogue.get_dataset(session=session, dataset_id=dataset_id)
    if row is None:
        raise not_found("dataset", dataset_id)
    try:
        path = dataset_store(settings).local(row.path, row.file_sha256, f"file of dataset {row.id}")
    except StoreError as exc:
        raise ApiError(500, "store_error", str(exc)) from exc
    return FileResponse(path, media_type="application/octet-stream", filename=f"{row.id}.npz")
