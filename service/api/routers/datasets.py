"""Datasets: upload your own (.npz, .csv, .zip of image folders), inspect them and the built-in ones, delete."""

from __future__ import annotations

import asyncio
import base64
import functools
import io
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any, Literal, TypeVar

import numpy as np
import orjson
from fastapi import APIRouter, Query, Request, Response

from service.api import links
from service.api.dataset_schemas import DatasetList, DatasetRead, DatasetSamples
from service.api.deps import Limit, Offset, SessionDep, SettingsDep
from service.api.errors import ApiError, ErrorItem, item, not_found, responses, validation_error
from service.api.multipart import receive_upload
from service.api.params import DatasetId
from service.datasets import catalogue, loading
from service.datasets.builtin import BUILTIN_DATASETS
from service.datasets.files import CHANNELS, KINDS_BY_SUFFIX, ColorMode, DatasetFileError, UploadOptions, kind_of
from service.datasets.text import Side
from service.db import DatasetRow
from service.store import dataset_store

router = APIRouter(prefix="/datasets", tags=["datasets"])
T = TypeVar("T")

UPLOAD_FIELDS = frozenset(
    {"name", "label_column", "image_size", "color_mode", "text_column", "num_words", "maxlen", "padding", "truncating"}
)
MAX_NUM_WORDS = 1_000_000
MAX_SEQUENCE_LENGTH = 100_000
MAX_IMAGE_SIDE = 1024
# height,width (or one number for both), each 1 to 1024: the schema states the same pattern.
SIDE = "(?:[1-9][0-9]{0,2}|10[01][0-9]|102[0-4])"
IMAGE_SIZE = re.compile(rf"^\s*({SIDE})(?:\s*[,x×]\s*({SIDE}))?\s*$")

UPLOAD_FORM: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "additionalProperties": False,
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": ".npz (x, y or x_train, y_train[, x_test, y_test][, class_names]), "
                            ".csv with a header, or .zip of class-named folders of PNG/JPEG images.",
                        },
                        "name": {
                            "type": "string",
                            "maxLength": 200,
                            "pattern": "^[^\\x00-\\x1f\\x7f-\\x9f]*$",
                            "description": "Default: the file's name without extension.",
                        },
                        "label_column": {
                            "type": "string",
                            "default": "label",
                            "maxLength": 256,
                            "pattern": "\\S",
                            "description": ".csv: the label.",
                        },
                        "image_size": {
                            "type": "string",
                            "default": "64,64",
                            "pattern": IMAGE_SIZE.pattern,
                            "description": f".zip: height,width every image is resized to (or one number), 1 to "
                            f"{MAX_IMAGE_SIDE}.",
                        },
                        "color_mode": {
                            "type": "string",
                            "enum": list(CHANNELS),
                            "default": "rgb",
                            "description": ".zip: 1, 3 or 4 channels.",
                        },
                        "text_column": {
                            "type": "string",
                            "maxLength": 256,
                            "description": ".csv of texts: the column of texts, which become sequences of word "
                            "indexes (TextVectorization's vocabulary, pad_sequences' padding); the other columns but "
                            "the label are ignored.",
                        },
                        "num_words": {
                            "type": "string",
                            "pattern": "^[0-9]+$",
                            "default": "10000",
                            "description": f".csv of texts: the vocabulary's size with padding (0) and [UNK] (1), "
                            f"as TextVectorization's max_tokens; 3 to {MAX_NUM_WORDS:,}.",
                        },
                        "maxlen": {
                            "type": "string",
                            "pattern": "^[0-9]+$",
                            "description": f".csv of texts: words per sequence (default 100); .npz of ragged "
                            f"sequences: their padded length (default: the longest); 1 to {MAX_SEQUENCE_LENGTH:,}.",
                        },
                        "padding": {
                            "type": "string",
                            "enum": ["pre", "post"],
                            "default": "pre",
                            "description": ".csv of texts, .npz of ragged sequences: where shorter ones get their "
                            "zeros (pad_sequences).",
                        },
                        "truncating": {
                            "type": "string",
                            "enum": ["pre", "post"],
                            "default": "pre",
                            "description": ".csv of texts, .npz of ragged sequences: which end of a longer one is "
                            "cut (pad_sequences).",
                        },
                    },
                }
            }
        },
    }
}


MAX_FILENAME = 255


def has_control_characters(text: str) -> bool:
    """NUL and the other control characters: no database or terminal takes them well in a name."""
    return any(ord(c) < 32 or 127 <= ord(c) < 160 for c in text)


def _check_filename(filename: str) -> None:
    if len(filename) > MAX_FILENAME or has_control_characters(filename):
        what = f"longer than {MAX_FILENAME} characters" if len(filename) > MAX_FILENAME else "holds control characters"
        raise validation_error([item(["file"], f"the file's name {what}; rename it")])
    if kind_of(filename) is None:
        raise ApiError(
            415,
            "unsupported_file",
            f"cannot read {filename!r}: expected a {', '.join(KINDS_BY_SUFFIX)} file",
            [item(["file"], f"unsupported file type {filename!r}")],
        )


def _options(fields: dict[str, str]) -> UploadOptions:
    problems: list[ErrorItem] = []
    label_column = fields.get("label_column", "label").strip()
    if not label_column:
        problems.append(item(["label_column"], "must name the label column"))
    size_text = fields.get("image_size", "64,64")
    size: tuple[int, int] = (64, 64)
    match = IMAGE_SIZE.fullmatch(size_text)
    if match is None:
        problems.append(
            item(
                ["image_size"],
                f"expected height,width from 1 to {MAX_IMAGE_SIDE} (e.g. 28,28); got {size_text[:40]!r}",
            )
        )
    else:
        height = int(match[1])
        size = (height, int(match[2] or height))
    color_mode = fields.get("color_mode", "rgb").strip()
    if color_mode not in CHANNELS:
        problems.append(item(["color_mode"], f"expected one of {', '.join(CHANNELS)}; got {color_mode!r}"))
    text_column = fields.get("text_column", "").strip() or None
    num_words = _whole_number(fields, "num_words", 10_000, 3, MAX_NUM_WORDS, problems)
    maxlen = _whole_number(fields, "maxlen", 0, 1, MAX_SEQUENCE_LENGTH, problems) or None
    sides: dict[str, Side] = {}
    for side in ("padding", "truncating"):
        value = fields.get(side, "pre").strip()
        if value not in ("pre", "post"):
            problems.append(item([side], f"expected 'pre' or 'post', as pad_sequences takes it; got {value[:40]!r}"))
        sides[side] = "post" if value == "post" else "pre"
    if problems:
        raise validation_error(problems)
    mode: ColorMode = color_mode  # type: ignore[assignment]  # checked just above
    return UploadOptions(
        label_column=label_column,
        image_size=size,
        color_mode=mode,
        text_column=text_column,
        num_words=num_words,
        maxlen=maxlen,
        padding=sides["padding"],
        truncating=sides["truncating"],
    )


def _whole_number(
    fields: dict[str, str], name: str, default: int, least: int, most: int, problems: list[ErrorItem]
) -> int:
    text = fields.get(name, "").strip()
    if not text:
        return default
    if not text.isdigit() or not least <= int(text) <= most:
        problems.append(item([name], f"expected a whole number from {least:,} to {most:,}; got {text[:40]!r}"))
        return default
    return int(text)


class Ingests:
    """Uploads being read into datasets: at most ``workers`` at once, each in a thread of its own, so that reading
    a large file never holds up the threads every other request shares. Others wait their turn, a minute at most."""

    WAIT_SECONDS = 60.0

    def __init__(self, workers: int) -> None:
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ingest")
        self.turns = asyncio.Semaphore(workers)

    async def run(self, function: Callable[[], T]) -> T:
        try:
            async with asyncio.timeout(self.WAIT_SECONDS):
                await self.turns.acquire()
        except TimeoutError:
            raise ApiError(
                503,
                "unavailable",
                "other uploads are being read (TRAINSERVE_MAX_CONCURRENT_INGESTS); try again shortly",
                headers={"Retry-After": "10"},
            ) from None
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, function)
        finally:
            self.turns.release()

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


@router.post(
    "",
    status_code=201,
    response_model=DatasetRead,
    responses={
        201: {"links": links.of_dataset("/dataset_id")},
        200: {
            "model": DatasetRead,
            "description": "These bytes were uploaded before (read the same way): that dataset.",
            "links": links.of_dataset("/dataset_id"),
        },
        **responses(400, 413, 415, 422),
    },
    openapi_extra=UPLOAD_FORM,
    summary="Upload a dataset",
)
async def upload_dataset(request: Request, response: Response, settings: SettingsDep) -> DatasetRead:
    """Upload a `.npz`, a `.csv` or a `.zip` of class-named image folders as multipart/form-data. The file is
    streamed to disk, read and checked once, and stored as normalised arrays; 201 with what was understood
    (shapes, classes, counts). The same bytes read the same way again answer 200 with the same dataset."""
    upload = await receive_upload(
        request,
        directory=settings.upload_staging,
        max_bytes=settings.max_upload_bytes,
        file_field="file",
        fields=UPLOAD_FIELDS,
        check_filename=_check_filename,
    )
    try:
        kind = kind_of(upload.filename)
        assert kind is not None  # checked while receiving
        options = _options(upload.fields)
        name = upload.fields.get("name", "").strip() or upload.filename.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        if len(name) > 200 or has_control_characters(name):
            raise validation_error([item(["name"], "at most 200 characters, and no control characters")])
        ingests: Ingests = request.app.state.ingests
        try:
            row, created = await ingests.run(
                functools.partial(
                    catalogue.ingest,
                    settings=settings,
                    upload=upload.path,
                    filename=upload.filename,
                    name=name,
                    kind=kind,
                    options=options,
                    sha256=upload.sha256,
                )
            )
        except DatasetFileError as exc:
            kind_of_error = "dataset_too_large" if exc.status == 413 else "invalid_dataset"
            raise ApiError(
                exc.status, kind_of_error, f"{upload.filename}: {exc.message}", [item([exc.field], exc.message)]
            ) from exc
    finally:
        upload.path.unlink(missing_ok=True)
    response.status_code = 201 if created else 200
    response.headers["Location"] = f"/datasets/{row.id}"
    return DatasetRead.from_row(row)


@router.get("", response_model=DatasetList, responses=responses(422))
def list_datasets(
    session: SessionDep,
    settings: SettingsDep,
    limit: Limit = 50,
    offset: Offset = 0,
) -> DatasetList:
    """The built-in datasets (whether each is available offline), then uploads, newest first."""
    page = list(BUILTIN_DATASETS.values())[offset : offset + limit]
    builtins = [DatasetRead.from_builtin(info, settings.keras_cache, None) for info in page]
    upload_offset = max(0, offset - len(BUILTIN_DATASETS))
    upload_limit = limit - len(builtins)
    rows: list[DatasetRow] = []
    if upload_limit > 0:
        found, _ = catalogue.list_datasets(session=session, limit=upload_limit, offset=upload_offset)
        rows = list(found)
    count = len(BUILTIN_DATASETS) + catalogue.count_datasets(session=session)
    return DatasetList(data=[*builtins, *(DatasetRead.from_row(row) for row in rows)], count=count)


def _builtin(dataset_id: str, settings: SettingsDep) -> DatasetRead | None:
    info = BUILTIN_DATASETS.get(dataset_id)
    if info is None:
        return None
    return DatasetRead.from_builtin(info, settings.keras_cache, catalogue.builtin_overview(info.name))


def _uploaded(session: SessionDep, dataset_id: str) -> DatasetRow:
    row = catalogue.get_dataset(session=session, dataset_id=dataset_id)
    if row is None:
        raise not_found("dataset", dataset_id)
    return row


@router.get("/{dataset_id}", response_model=DatasetRead, responses=responses(404))
def get_dataset(dataset_id: DatasetId, session: SessionDep, settings: SettingsDep) -> DatasetRead:
    """One dataset: shapes, classes and counts, and min/max/mean/std of its inputs (of a keras.datasets one, only
    what is known without loading it)."""
    return _builtin(dataset_id, settings) or DatasetRead.from_row(_uploaded(session, dataset_id))


@router.get(
    "/{dataset_id}/samples",
    response_model=DatasetSamples,
    response_class=Response,
    responses={**responses(404, 409, 422), 200: {"model": DatasetSamples}},
)
def get_samples(
    dataset_id: DatasetId,
    session: SessionDep,
    settings: SettingsDep,
    n: Annotated[int, Query(ge=1, le=catalogue.SAMPLE_ROWS, description="How many rows, from the first.")] = 5,
    split: Annotated[Literal["train", "test"], Query()] = "train",
    values: Annotated[
        bool, Query(description="Include each sample's numbers; `false` answers images (and labels) only.")
    ] = True,
) -> Response:
    """The first `n` rows of a split as numbers in the dataset's units, with their classes; images also as PNG.
    An answer may be at most `TRAINSERVE_MAX_RESPONSE_BYTES` (422 with the `n` that fits)."""
    info = BUILTIN_DATASETS.get(dataset_id)
    if info is not None:
        overview = catalogue.builtin_overview(info.name)
        if overview is None:
            raise ApiError(
                409,
                "not_loaded",
                f"{info.name!r} is a keras.datasets dataset, which only workers load; its samples are not served",
            )
        if split != "train":
            raise not_found("test split in dataset", dataset_id)
        x, y, rows = overview.head_x, overview.head_y, overview.splits["train"]
        class_names, images = list(info.class_names or ()) or None, False
    else:
        row = _uploaded(session, dataset_id)
        if split not in row.splits:
            raise not_found("test split in dataset", dataset_id)
        x, y = loading.stored_split(row, dataset_store(settings), split)
        rows, class_names, images = row.splits[split], row.class_names, row.kind == "images"
    count = min(n, rows)
    _check_answer_size(count, x, values=values, images=images, limit=settings.max_response_bytes)
    samples = [
        {
            "index": i,
            "x": np.ascontiguousarray(x[i]) if values else None,
            "y": int(y[i]),
            "label": class_names[int(y[i])] if class_names else None,
            "image": _png_data_url(np.asarray(x[i])) if images else None,
        }
        for i in range(count)
    ]
    content = {"dataset_id": dataset_id, "split": split, "rows": rows, "samples": samples}
    return Response(orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")


def _check_answer_size(count: int, x: np.ndarray[Any, Any], *, values: bool, images: bool, limit: int) -> None:
    """Refuse before building an answer larger than the service sends: about one JSON number per value (a few
    characters for bytes, up to 16 for float32) and the PNG as base64, at most its raw pixels."""
    size = int(np.prod(x.shape[1:]))
    per_sample = 200 + (size * (4 if x.dtype == np.uint8 else 16) if values else 0) + (size * 4 // 3 if images else 0)
    if count * per_sample <= limit:
        return
    fits = limit // per_sample
    hint = f"ask for at most n={fits}" if fits else "no sample's numbers fit"
    if values and images:
        hint += ", or for images only (values=false)"
    raise validation_error(
        [
            item(
                ["query", "n"],
                f"{count} samples of {list(x.shape[1:])} values would make an answer of about "
                f"{count * per_sample:,} bytes, more than this service sends (TRAINSERVE_MAX_RESPONSE_BYTES: "
                f"{limit:,}); {hint}",
            )
        ]
    )


def _png_data_url(sample: np.ndarray[Any, Any]) -> str:
    from PIL import Image

    pixels = np.clip(np.rint(sample), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@router.delete("/{dataset_id}", status_code=204, response_class=Response, responses=responses(404, 409))
def delete_dataset(dataset_id: DatasetId, session: SessionDep, settings: SettingsDep) -> Response:
    """Delete an uploaded dataset and its file; 409 while a queued or running job trains on it. Models already
    trained on it are kept."""
    if dataset_id in BUILTIN_DATASETS:
        raise ApiError(409, "builtin_dataset", f"{dataset_id!r} is a built-in dataset; only uploads can be deleted")
    row = _uploaded(session, dataset_id)
    using = catalogue.jobs_using(session=session, dataset_id=row.id)
    if using:
        raise ApiError(
            409,
            "dataset_in_use",
            f"dataset {row.id} is used by {len(using)} queued or running job(s): {', '.join(using)}; "
            f"delete it when they have finished",
        )
    catalogue.delete_dataset(session=session, row=row, store=dataset_store(settings))
    return Response(status_code=204)
