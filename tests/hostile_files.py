"""Files and requests crafted to make a careless server allocate, compute or crash: each is small on the wire."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from typing import Any

import numpy as np
from PIL import Image

from tests.datafiles import npz_bytes, png_bytes


def long_label_csv(rows: int = 30_000, label_chars: int = 40_000) -> bytes:
    """One row whose label is ``label_chars`` long, then short rows: a fixed-width string array of all the labels
    would take rows × label_chars × 4 bytes."""
    lines = ["x,label", f"0,{'a' * label_chars}"]
    lines += [f"{i % 7},c{i % 2}" for i in range(1, rows)]
    return ("\n".join(lines) + "\n").encode()


def wide_csv(columns: int = 300_000) -> bytes:
    header = ",".join(f"c{i}" for i in range(columns))
    return f"{header}\n".encode() + b",".join(b"1" for _ in range(columns)) + b"\n"


def uniform_png(width: int, height: int, mode: str = "L") -> bytes:
    """A large, uniform image: megapixels that compress to kilobytes."""
    buffer = io.BytesIO()
    Image.new(mode, (width, height)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def repeated_entry_zip(image: bytes, times: int) -> bytes:
    """A zip whose central directory lists one stored member ``times`` times under different names, all pointing
    at the same bytes: ``times`` images to decode from one image's worth of file."""
    local_name = b"a/0.png"
    crc = zlib.crc32(image)
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 0, 0, 0, crc, len(image), len(image), len(local_name), 0)
    body = local + local_name + image
    central = b""
    for i in range(times):
        name = f"{'ab'[i % 2]}/{i}.png".encode()
        central += struct.pack(
            "<IHHHHHHIIIHHHHHII",
            0x02014B50,
            20,
            20,
            0,
            0,
            0,
            0,
            crc,
            len(image),
            len(image),
            len(name),
            0,
            0,
            0,
            0,
            0,
            0,  # every entry's local header is at offset 0
        )
        central += name
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, times, times, len(central), len(body), 0)
    return body + central + end


def images_of(count: int, side: int, mode: str = "RGBA") -> bytes:
    """``count`` uniform side×side images in two class folders."""
    image = uniform_png(side, side, mode)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for i in range(count):
            zf.writestr(f"{'ab'[i % 2]}/{i}.png", image)
    return buffer.getvalue()


def npy_bytes(array: np.ndarray[Any, Any]) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def npy_with_header(header: str, data: bytes = b"") -> bytes:
    """A .npy file with a hand-written header dict (format 1.0)."""
    text = header.encode("latin1")
    padding = 64 - (10 + len(text) + 1) % 64
    text += b" " * padding + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + data


def zip_of(members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as zf:
        for name, content in members.items():
            zf.writestr(name, content)
    return buffer.getvalue()


def with_compression_method(zip_bytes: bytes, method: int) -> bytes:
    """The same zip with every member claiming another compression method (e.g. 99, unknown)."""
    data = bytearray(zip_bytes)
    for signature, offset in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
        start = 0
        while (found := data.find(signature, start)) >= 0:
            data[found + offset : found + offset + 2] = struct.pack("<H", method)
            start = found + 4
    return bytes(data)


def with_encryption_flag(zip_bytes: bytes) -> bytes:
    data = bytearray(zip_bytes)
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        start = 0
        while (found := data.find(signature, start)) >= 0:
            (flags,) = struct.unpack("<H", data[found + offset : found + offset + 2])
            data[found + offset : found + offset + 2] = struct.pack("<H", flags | 1)
            start = found + 4
    return bytes(data)


def crafted_uploads() -> list[tuple[str, str, bytes, dict[str, str], bool]]:
    """(case, filename, content, form fields, whether it is a dataset) of uploads that crashed a parser once.

    Bytes before a zip's first member are what self-extracting archives carry; zip readers skip them, and so
    does this service: the archive itself is intact (its directory and every member's CRC are checked)."""
    x = np.zeros((4, 2), np.float32)
    y = np.array([0, 1, 0, 1])
    valid_npz = npz_bytes(x=x, y=y)
    images = zip_of({"a/1.png": png_bytes(np.zeros((4, 4, 3))), "b/1.png": png_bytes(np.ones((4, 4, 3)))})
    huge_shape = npy_with_header("{'descr': '<f8', 'fortran_order': False, 'shape': (35184372088832, 2), }")
    return [
        ("npz with a 0-d y", "a.npz", npz_bytes(x=x, y=np.array(3)), {}, False),
        ("junk bytes before a zip", "a.npz", b"junk" * 100 + valid_npz, {}, True),
        ("junk bytes before an image zip", "a.zip", b"junk" * 100 + images, {}, True),
        ("npy and zip at once", "a.npz", npy_bytes(x * 2) + valid_npz, {}, True),
        ("unknown compression method", "a.npz", with_compression_method(valid_npz, 99), {}, False),
        ("unknown compression method in an image zip", "a.zip", with_compression_method(images, 99), {}, False),
        ("encrypted member", "a.npz", with_encryption_flag(valid_npz), {}, False),
        ("encrypted image", "a.zip", with_encryption_flag(images), {}, False),
        ("npy header declaring 2**45 rows", "a.npz", zip_of({"x.npy": huge_shape, "y.npy": npy_bytes(y)}), {}, False),
        ("superscript image size", "a.zip", images, {"image_size": "²"}, False),
        ("300,000 csv columns", "a.csv", wide_csv(), {}, False),
    ]
