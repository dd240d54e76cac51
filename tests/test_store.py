"""The stores, the same tests for both kinds: a local directory, and an object store reached through fsspec and
s3fs. The object store here is moto's S3 server, an emulator of the S3 REST API over real HTTP: the one part that
cannot run here for real (there is no S3 to reach), standing in for S3 or MinIO."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.embedded import free_port
from service.settings import Settings, is_url
from service.store import (
    LocalStore,
    ObjectStore,
    Store,
    StoreError,
    checkpoint_files,
    checkpoint_name,
    open_store,
    remove_checkpoint,
    write_checkpoint,
)

JOB = "0123456789abcdef0123456789abcdef"
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "trainserve", "AWS_SECRET_ACCESS_KEY": "trainserve"}


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on a port of its own, with a bucket; the process's S3 clients pointed at it."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    previous = {name: os.environ.get(name) for name in (*S3_CREDENTIALS, "AWS_ENDPOINT_URL")}
    os.environ.update(S3_CREDENTIALS | {"AWS_ENDPOINT_URL": endpoint})
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="bucket")
    try:
        yield endpoint
    finally:
        server.stop()
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    request.getfixturevalue("s3_endpoint")
    return ObjectStore(f"s3://bucket/{tmp_path.name}", tmp_path / "cache", cache_bytes=10_000)


def test_a_file_is_stored_whole_and_read_verified(store: Store, tmp_path: Path) -> None:
    content = os.urandom(3000)
    source = tmp_path / "model.keras"
    source.write_bytes(content)
    sha256 = store.put_file("m.keras", source)
    assert sha256 == hashlib.sha256(content).hexdigest()
    assert store.names("") == ["m.keras"], "no temporary file left beside it"
    assert store.size("m.keras") == 3000
    assert store.local("m.keras", sha256, "model").read_bytes() == content
    assert store.read("m.keras", sha256, "model") == content

    with pytest.raises(StoreError, match="does not match the sha256"):
        store.local("m.keras", "0" * 64, "model")
    with pytest.raises(StoreError, match="the model is missing from the store"):
        store.read("missing.keras", sha256, "model")
    with pytest.raises(StoreError, match="missing"):
        store.local("missing.keras", hashlib.sha256(b"never stored").hexdigest(), "model")


def test_a_file_written_by_a_writer_gets_the_sha256_of_what_is_stored(store: Store) -> None:
    """np.savez seeks back to rewrite its zip headers: the sha256 is of the file as it ends up."""
    import numpy as np

    sha256, size = store.put_with("d.npz", lambda f: np.savez(f, x=np.arange(100)))
    content = store.read("d.npz", sha256, "dataset")
    assert len(content) == size
    assert hashlib.sha256(content).hexdigest() == sha256
    assert store.put_bytes("b.tflite", b"flat") == hashlib.sha256(b"flat").hexdigest()


def test_a_failed_writer_leaves_nothing(store: Store) -> None:
    def broken(f: Any) -> None:
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        store.put_with("half.keras", broken)
    assert store.names("") == []


def test_directories_and_files_as_they_are(store: Store) -> None:
    """What TensorBoard's logs use: files no record names, read as they are, listed by directory."""
    store.put_bytes("tensorboard/job-a/train/events.1", b"one")
    store.put_bytes("tensorboard/job-b/validation/events.2", b"two")
    assert sorted(store.directories("tensorboard")) == ["job-a", "job-b"]
    assert store.names("tensorboard/job-a/train") == ["events.1"]
    assert store.unchecked("tensorboard/job-b/validation/events.2") == b"two"
    with pytest.raises(FileNotFoundError):
        store.unchecked("tensorboard/job-c/train/events.3")
    local = store.local_directory("tensorboard")
    if isinstance(store, LocalStore):
        assert local is not None
        assert (local / "job-a" / "train" / "events.1").read_bytes() == b"one"
    else:
        assert local is None


def test_a_copy_is_a_file_of_its_own(store: Store) -> None:
    sha256 = store.put_bytes("a.keras", b"model")
    store.copy("a.keras", "b.keras")
    store.delete("a.keras")
    assert store.read("b.keras", sha256, "copy") == b"model"
    with pytest.raises(FileNotFoundError):
        store.copy("gone.keras", "c.keras")
    store.delete("gone.keras")  # nothing to remove is no error


def test_checkpoints_are_listed_by_job_and_removed(store: Store) -> None:
    name = checkpoint_name(JOB, 1, 3)
    _sha256, size = write_checkpoint(store, name, lambda f: f.write(b"state"))
    assert size == 5
    assert checkpoint_files(store) == {name: (JOB, 1)}
    store.put_bytes("other.keras", b"x")
    assert checkpoint_files(store) == {name: (JOB, 1)}, "only the checkpoints directory"
    remove_checkpoint(store, name)
    assert checkpoint_files(store) == {}
    with pytest.raises(ValueError, match="not a checkpoint file name"):
        remove_checkpoint(store, "../other.keras")


def test_an_object_store_reads_through_a_bounded_cache_keyed_by_sha256(s3_endpoint: str, tmp_path: Path) -> None:
    store = ObjectStore(f"s3://bucket/{tmp_path.name}", tmp_path / "cache", cache_bytes=5000)
    first, second = os.urandom(3000), os.urandom(3000)
    a, b = store.put_bytes("a.keras", first), store.put_bytes("b.keras", second)
    path = store.local("a.keras", a, "a")
    assert path == tmp_path / "cache" / f"{a}.keras"
    assert store.local("a.keras", a, "a") == path, "fetched once"
    store.local("b.keras", b, "b")
    cached = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert cached == [f"{b}.keras"], "the least recently used went to stay within 5,000 bytes"

    # A cached copy that rotted on local disk is fetched again, not used.
    rotten = store.local("b.keras", b, "b")
    rotten.write_bytes(b"rot")
    assert store.local("b.keras", b, "b").read_bytes() == second

    # A cached copy is never taken for another content: the sha256 recorded names it.
    store.put_bytes("a.keras", second)  # replaced in the store behind the record's back
    with pytest.raises(StoreError, match="does not match"):
        store.local("a.keras", a, "a")


def test_concurrent_readers_of_one_object_all_get_it(s3_endpoint: str, tmp_path: Path) -> None:
    store = ObjectStore(f"s3://bucket/{tmp_path.name}", tmp_path / "cache", cache_bytes=1 << 20)
    content = os.urandom(50_000)
    sha256 = store.put_bytes("m.keras", content)
    got: list[bytes] = []
    threads = [
        threading.Thread(target=lambda: got.append(store.local("m.keras", sha256, "m").read_bytes())) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert got == [content] * 8


def test_a_store_setting_is_a_directory_or_a_url(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, model_store="models", dataset_store="s3://bucket/datasets")
    assert settings.model_store == str(tmp_path.resolve() / "models")
    assert settings.dataset_store == "s3://bucket/datasets"
    assert Settings(home=tmp_path, model_store=tmp_path / "elsewhere").model_store == str(tmp_path / "elsewhere")
    assert Settings(home=tmp_path, model_store=f"file://{tmp_path}/there").model_store == f"{tmp_path}/there"
    assert not is_url(f"file://{tmp_path}")
    assert is_url("s3://bucket/x")
    assert is_url("gs://b")
    assert not is_url("/data/models")
    assert not is_url("models")
    local = open_store(settings.model_store, cache=settings.store_cache, cache_bytes=1)
    assert isinstance(local, LocalStore)
    assert open_store(settings.model_store, cache=settings.store_cache, cache_bytes=1) is local
