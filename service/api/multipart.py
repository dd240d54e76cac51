"""A multipart/form-data upload streamed to a file on disk, never held whole in memory, with a size cap.

Starlette's ``request.form()`` spools files to the system temporary directory (often memory-backed) and has no
size limit; this reads the body as it arrives, writes the one file part to the given directory while hashing it,
keeps the small text fields, and stops with a 413 as soon as the file passes the limit (or at once, when
Content-Length already says so).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from python_multipart import MultipartParser
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import parse_options_header

from service.api.errors import ApiError, item, validation_error

# Room for the text fields and part headers around the file.
FORM_OVERHEAD_BYTES = 64 * 1024
MAX_FIELD_BYTES = 1024


@dataclass
class Upload:
    """The received file (on disk; the caller removes it) and the form's text fields."""

    path: Path
    filename: str
    size: int
    sha256: str
    fields: dict[str, str] = field(default_factory=dict)


def too_large(max_bytes: int) -> ApiError:
    return ApiError(
        413,
        "payload_too_large",
        f"the file is larger than the upload limit of {max_bytes:,} bytes (TRAINSERVE_MAX_UPLOAD_BYTES)",
    )


@dataclass
class _Part:
    name: str = ""
    filename: str | None = None
    header_field: bytearray = field(default_factory=bytearray)
    header_value: bytearray = field(default_factory=bytearray)
    value: bytearray = field(default_factory=bytearray)


class _Receiver:
    """Collects the parser's callbacks; file bytes are handed out by ``take_file_data`` to be written."""

    def __init__(self, file_field: str, fields: frozenset[str], check_filename: Callable[[str], None]) -> None:
        self.file_field = file_field
        self.allowed = fields
        self.check_filename = check_filename
        self.part = _Part()
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.in_file = False
        self.pending: list[bytes] = []

    def on_part_begin(self) -> None:
        self.part = _Part()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.part.header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.part.header_value += data[start:end]
        if len(self.part.header_value) > 8 * 1024:
            raise ApiError(400, "bad_request", "a part header of the multipart body is too long")

    def on_header_end(self) -> None:
        if bytes(self.part.header_field).strip().lower() == b"content-disposition":
            _, params = parse_options_header(bytes(self.part.header_value))
            self.part.name = _text(params.get(b"name", b""))
            filename = params.get(b"filename")
            self.part.filename = None if filename is None else _text(filename)
        self.part.header_field.clear()
        self.part.header_value.clear()

    def on_headers_finished(self) -> None:
        part = self.part
        if part.name == self.file_field:
            if self.filename is not None:
                raise validation_error([item([self.file_field], "send one file per upload")])
            if not part.filename:
                raise validation_error(
                    [item([self.file_field], "this field must be a file (curl -F 'file=@data.npz')")]
                )
            self.check_filename(part.filename)
            self.filename = part.filename
            self.in_file = True
        elif part.name not in self.allowed:
            expected = ", ".join(sorted({self.file_field, *self.allowed}))
            raise validation_error([item([part.name], f"unknown field {part.name!r}; expected: {expected}")])
        elif part.filename is not None:
            raise validation_error([item([part.name], "this field takes text, not a file")])

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.in_file:
            self.pending.append(data[start:end])
            return
        self.part.value += data[start:end]
        if len(self.part.value) > MAX_FIELD_BYTES:
            raise validation_error([item([self.part.name], f"longer than {MAX_FIELD_BYTES} bytes")])

    def on_part_end(self) -> None:
        if self.in_file:
            self.in_file = False
        elif self.part.name:
            self.fields[self.part.name] = _text(bytes(self.part.value))

    def take_file_data(self) -> bytes:
        data = b"".join(self.pending)
        self.pending.clear()
        return data


def _text(value: bytes) -> str:
    try:
        return value.decode()
    except UnicodeDecodeError:
        return value.decode("latin-1")


def _write(out: IO[bytes], digest: hashlib._Hash, data: bytes) -> None:
    out.write(data)
    digest.update(data)


async def receive_upload(
    request: Request,
    *,
    directory: Path,
    max_bytes: int,
    file_field: str,
    fields: frozenset[str],
    check_filename: Callable[[str], None],
) -> Upload:
    """Stream the multipart body: the file part to a new file in ``directory``, the text fields to memory."""
    content_type, params = parse_options_header(request.headers.get("content-type"))
    if content_type != b"multipart/form-data" or not params.get(b"boundary"):
        raise ApiError(
            415,
            "unsupported_media_type",
            "send the dataset as multipart/form-data with the file in the field 'file' (curl -F 'file=@data.npz')",
        )
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_bytes + FORM_OVERHEAD_BYTES:
        raise too_large(max_bytes)

    receiver = _Receiver(file_field, fields, check_filename)
    parser = MultipartParser(
        params[b"boundary"],
        {
            "on_part_begin": receiver.on_part_begin,
            "on_header_field": receiver.on_header_field,
            "on_header_value": receiver.on_header_value,
            "on_header_end": receiver.on_header_end,
            "on_headers_finished": receiver.on_headers_finished,
            "on_part_data": receiver.on_part_data,
            "on_part_end": receiver.on_part_end,
        },
    )
    directory.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=directory, prefix=".upload-", suffix=".part")
    path = Path(name)
    digest = hashlib.sha256()
    size = 0
    received = 0
    try:
        with os.fdopen(fd, "wb") as out:
            async for chunk in request.stream():
                received += len(chunk)
                if received > max_bytes + FORM_OVERHEAD_BYTES:
                    raise too_large(max_bytes)
                try:
                    parser.write(chunk)
                except MultipartParseError as exc:
                    raise ApiError(400, "bad_request", f"the multipart body is malformed: {exc}") from exc
                data = receiver.take_file_data()
                if data:
                    size += len(data)
                    if size > max_bytes:
                        raise too_large(max_bytes)
                    await run_in_threadpool(_write, out, digest, data)
            parser.finalize()
        if receiver.filename is None:
            raise validation_error([item([file_field], "field required: the dataset file (curl -F 'file=@data.npz')")])
        return Upload(path, receiver.filename, size, digest.hexdigest(), receiver.fields)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
