"""Texts as sequences: a .csv of reviews is tokenized at upload exactly as Keras' TextVectorization and
pad_sequences would, trained on with an Embedding and a recurrent layer by the real worker, and the model answers
raw text the same as the word indexes it stands for; imdb is a built-in that says clearly when it cannot load."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.datasets.text import TextEncoding, vocabulary, words
from tests.conftest import train
from tests.datafiles import csv_bytes, upload

GOOD = ("great", "wonderful", "loved", "brilliant", "moving", "superb")
BAD = ("awful", "boring", "hated", "dull", "terrible", "waste")
FILLER = ("the", "film", "plot", "acting", "was", "and", "it", "a", "of", "story", "I", "This", "movie")


def reviews(count: int, seed: int = 0) -> list[tuple[str, str]]:
    """Short reviews, each with a few words of its feeling among filler, capitals and punctuation included."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        positive = i % 2 == 0
        feeling = GOOD if positive else BAD
        words_ = [str(rng.choice(FILLER)) for _ in range(int(rng.integers(4, 18)))]
        for _ in range(int(rng.integers(1, 4))):
            words_.insert(int(rng.integers(0, len(words_) + 1)), str(rng.choice(feeling)).capitalize() + "!")
        rows.append((" ".join(words_) + ".", "positive" if positive else "negative"))
    return rows


def keras_sequences(texts: list[str], num_words: int, maxlen: int, padding: str, truncating: str) -> Any:
    """What a learner's Keras does: TextVectorization adapted on the texts, then pad_sequences."""
    import keras

    vectorize = keras.layers.TextVectorization(max_tokens=num_words, ragged=True)
    vectorize.adapt(texts)
    ragged = [row.numpy().tolist() for row in vectorize(texts)]
    return vectorize.get_vocabulary(), keras.utils.pad_sequences(
        ragged, maxlen=maxlen, padding=padding, truncating=truncating
    )


@pytest.mark.parametrize(("padding", "truncating"), [("pre", "pre"), ("post", "post"), ("pre", "post")])
def test_texts_become_the_sequences_keras_makes(padding: str, truncating: str) -> None:
    texts = [text for text, _ in reviews(60)] + ["Don't   stop—me,NOW; (please) x_y a-b tab\there", ""]
    num_words, maxlen = 12, 15
    expected_vocabulary, expected = keras_sequences(texts, num_words, maxlen, padding, truncating)

    from collections import Counter

    counts = Counter(word for text in texts for word in words(text))
    ours = TextEncoding(vocabulary(counts, num_words), maxlen, padding, truncating)  # type: ignore[arg-type]
    assert list(ours.vocabulary) == [str(word) for word in expected_vocabulary]
    assert np.array_equal(ours.encode_all(texts), expected)


def test_a_text_csv_is_refused_with_the_column_to_blame(client: TestClient) -> None:
    content = csv_bytes(["review", "feeling"], reviews(10))
    status, error = upload(client, "reviews.csv", content, text_column="text", label_column="feeling")
    assert status == 422, error
    assert error["error"]["errors"][0]["path"] == "text_column"
    assert "no column 'text' in the header (columns: 'review', 'feeling')" in error["error"]["message"]
    status, error = upload(client, "reviews.csv", content, text_column="review", label_column="feeling", maxlen="0")
    assert status == 422, error
    assert error["error"]["errors"][0]["path"] == "maxlen"


@pytest.mark.slow
def test_upload_train_and_predict_from_raw_text(client: TestClient) -> None:
    rows = reviews(400)
    options = {"text_column": "review", "label_column": "feeling", "num_words": "20", "maxlen": "24"}
    status, dataset = upload(
        client,
        "reviews.csv",
        csv_bytes(["id", "review", "feeling"], [(i, *row) for i, row in enumerate(rows)]),
        **options,
    )
    assert status == 201, dataset
    assert dataset["x_shape"] == [400, 24]
    assert dataset["dtype"] == "int32"
    assert dataset["class_names"] == ["negative", "positive"]
    text = dataset["text"]
    assert text["num_words"] == 20  # 25 distinct words: the 18 most frequent, padding and [UNK]
    assert (text["maxlen"], text["padding"], text["truncating"]) == (24, "pre", "pre")

    body: dict[str, Any] = {
        "name": "reviews lstm",
        "model": {
            "input_shape": [24],
            "layers": [
                {"type": "embedding", "input_dim": 20, "output_dim": 8},
                {"type": "lstm", "units": 8},
                {"type": "dense", "units": 1, "activation": "sigmoid"},
            ],
        },
        "compile": {"optimizer": {"type": "rmsprop", "learning_rate": 0.01}, "loss": "binary_crossentropy"},
        "dataset": {"id": dataset["dataset_id"], "test_size": 0.2, "random_state": 42},
        "fit": {"epochs": 8, "batch_size": 32, "seed": 42, "validation_data": "test"},
    }
    job = train(client, body)
    assert job["status"] == "succeeded", job["error"]
    assert job["evaluation"]["accuracy"] > 0.9, job["evaluation"]

    texts = ["A great, wonderful film: I loved it!", "Awful. Boring and dull; a waste."]
    encoding = TextEncoding.from_json(
        {
            **text,
            "vocabulary": ["", "[UNK]", *client.get(f"/datasets/{dataset['dataset_id']}").json()["text"]["top_words"]],
        }
    )
    answer = client.post("/predict", json={"model_id": job["model_id"], "instances": texts})
    assert answer.status_code == 200, answer.text
    assert answer.json()["labels"] == ["positive", "negative"]
    # An LSTM's loop over the steps has no TFLite builtin: the graph serves it, and the record says why.
    litert = client.get(f"/models/{job['model_id']}").json()["litert"]
    assert litert["error"].startswith("recurrent layers do not convert")
    numbers = client.post(
        "/predict", json={"model_id": job["model_id"], "instances": encoding.encode_all(texts).tolist()}
    )
    assert numbers.json()["predictions"] == answer.json()["predictions"]

    # The book's first RNN: one-hot vectors of the word indexes into a SimpleRNN; raw text still predicts.
    one_hot = {
        **body,
        "name": "reviews one-hot rnn",
        "model": {
            "input_shape": [24, 20],
            "layers": [{"type": "simple_rnn", "units": 8}, {"type": "dense", "units": 1, "activation": "sigmoid"}],
        },
        "dataset": {**body["dataset"], "one_hot": True},
    }
    rnn = train(client, one_hot)
    assert rnn["status"] == "succeeded", rnn["error"]
    answer = client.post("/predict", json={"model_id": rnn["model_id"], "instances": texts})
    assert answer.status_code == 200, answer.text
    assert answer.json()["labels"] == ["positive", "negative"]

    mixed = client.post("/predict", json={"model_id": job["model_id"], "instances": [texts[0], [0] * 24]})
    assert mixed.status_code == 422, mixed.text
    assert mixed.json()["error"]["errors"][0]["path"] == "instances[1]"


def test_imdb_needs_its_length_and_fails_clearly_offline(client: TestClient) -> None:
    body: dict[str, Any] = {
        "model": {
            "input_shape": [100],
            "layers": [
                {"type": "embedding", "input_dim": 500, "output_dim": 16},
                {"type": "simple_rnn", "units": 8},
                {"type": "dense", "units": 1, "activation": "sigmoid"},
            ],
        },
        "compile": {"optimizer": {"type": "rmsprop", "learning_rate": 1e-4}, "loss": "binary_crossentropy"},
        "dataset": {"name": "imdb", "num_words": 500},
        "fit": {"epochs": 1, "batch_size": 64},
    }
    response = client.post("/train", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["errors"][0]["path"] == "dataset.maxlen"

    body["dataset"]["maxlen"] = 100
    job = train(client, body)  # imdb is not in the test's Keras cache, and nothing can be downloaded here
    assert job["status"] == "failed"
    assert job["error"]["type"] == "DatasetUnavailable"
    assert "'imdb' is not in the Keras cache" in job["error"]["message"]

    body["dataset"]["maxlen"] = 100
    body["model"]["layers"][0]["input_dim"] = 300
    response = client.post("/train", json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]["errors"][0]
    assert error["path"] == "model.layers[0].input_dim"
    assert error["message"] == (
        "the word indexes of dataset 'imdb' run from 0 to 499: input_dim must be at least 500 (it is 300)"
    )

    body["dataset"] = {"name": "digits", "maxlen": 100}
    response = client.post("/train", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["errors"][0]["path"] == "dataset.maxlen"


def test_one_hot_sequences_are_what_to_categorical_makes() -> None:
    import keras

    from worker.training import one_hot

    sequences = np.array([[0, 3, 1, 2], [4, 4, 0, 0]], dtype=np.int32)
    assert np.array_equal(one_hot(sequences, 5), keras.utils.to_categorical(sequences, num_classes=5))
    with pytest.raises(ValueError, match="outside 0 to 3"):
        one_hot(sequences, 4)


def ragged_npz(
    sequences: list[list[int]], labels: list[int], test: tuple[list[list[int]], list[int]] | None = None
) -> bytes:
    from tests.datafiles import npz_bytes

    def pair(prefix: str, rows: list[list[int]]) -> dict[str, Any]:
        offsets = np.cumsum([0, *(len(row) for row in rows)])
        values = np.array([v for row in rows for v in row], dtype=np.int64)
        return {f"{prefix}_values": values, f"{prefix}_offsets": offsets}

    arrays = {**pair("x_train", sequences), "y_train": np.array(labels)}
    if test is not None:
        arrays |= {**pair("x_test", test[0]), "y_test": np.array(test[1])}
    return npz_bytes(**arrays)


@pytest.mark.parametrize(
    ("maxlen", "padding", "truncating"), [(None, "pre", "pre"), (3, "post", "pre"), (4, "pre", "post")]
)
def test_ragged_sequences_are_padded_as_pad_sequences_pads_them(
    tmp_path: Any, maxlen: int | None, padding: str, truncating: str
) -> None:
    import keras

    from service.datasets.files import IngestLimits, UploadOptions, parse_npz

    train_rows, test_rows = [[5, 1, 9], [], [2, 2, 2, 2, 7]], [[3], [8, 6, 4, 2, 1, 9]]
    path = tmp_path / "sequences.npz"
    path.write_bytes(ragged_npz(train_rows, [0, 1, 0], (test_rows, [1, 0])))
    options = UploadOptions(maxlen=maxlen, padding=padding, truncating=truncating)  # type: ignore[arg-type]
    parsed = parse_npz(path, IngestLimits(), options=options)
    longest = maxlen or 6  # without a maxlen, every split is padded to the longest sequence of any
    for rows, ours in ((train_rows, parsed.x_train), (test_rows, parsed.x_test)):
        expected = keras.utils.pad_sequences(rows, maxlen=longest, padding=padding, truncating=truncating)
        assert ours is not None
        assert ours.dtype == np.int32
        assert np.array_equal(ours, expected)


def test_ragged_uploads_train_and_bad_offsets_are_refused(client: TestClient) -> None:
    rng = np.random.default_rng(1)
    rows = [[int(v) for v in rng.integers(1, 30, size=int(rng.integers(1, 12)))] for _ in range(60)]
    labels = [int(sum(row) % 2) for row in rows]
    status, dataset = upload(client, "sequences.npz", ragged_npz(rows, labels), maxlen="10")
    assert status == 201, dataset
    assert dataset["x_shape"] == [60, 10]
    assert dataset["dtype"] == "int32"
    assert dataset["options"] == {"maxlen": 10, "padding": "pre", "truncating": "pre"}
    body = {
        "model": {
            "input_shape": [10],
            "layers": [
                {"type": "embedding", "input_dim": 30, "output_dim": 4},
                {"type": "global_average_pooling1d"},
                {"type": "dense", "units": 2, "activation": "softmax"},
            ],
        },
        "compile": {"optimizer": "adam"},
        "dataset": {"id": dataset["dataset_id"]},
        "fit": {"epochs": 2, "batch_size": 16},
    }
    job = train(client, body)
    assert job["status"] == "succeeded", job["error"]

    from tests.datafiles import npz_bytes

    broken = npz_bytes(x_train_values=np.arange(5), x_train_offsets=np.array([0, 2, 4]), y_train=np.array([0, 1]))
    status, error = upload(client, "broken.npz", broken)
    assert status == 422, error
    assert (
        "x_train_offsets must start at 0, never decrease and end at the length of x_train_values (5)"
        in (error["error"]["message"])
    )
    status, error = upload(client, "half.npz", npz_bytes(x_train_values=np.arange(5), y_train=np.array([0])))
    assert status == 422, error
    assert "only one of 'x_train_values' and 'x_train_offsets'" in error["error"]["message"]


@pytest.mark.slow
def test_the_books_rnns_train_on_a_small_text_csv(client: TestClient) -> None:
    """The 9-2 and 9-3 examples, imdb replaced by reviews tokenized at upload the way the book's imdb is cut."""
    from service.examples import book_examples

    # Reviews of 20 words rather than the book's 100: the same models, a fifth of the steps through time.
    options = {"text_column": "review", "label_column": "feeling", "num_words": "500", "maxlen": "20"}
    status, dataset = upload(
        client, "book reviews.csv", csv_bytes(["review", "feeling"], reviews(200, seed=9)), **options
    )
    assert status in (200, 201), dataset
    words = dataset["text"]["num_words"]
    examples = {stem: body for stem, body in book_examples().items() if stem.startswith("imdb_9_")}
    assert len(examples) == 6
    for stem, body in examples.items():
        one_hot = body["dataset"].get("one_hot", False)
        body["dataset"] = {"id": dataset["dataset_id"], "one_hot": one_hot}
        body["model"]["input_shape"] = [20, words] if one_hot else [20]
        body["fit"] |= {"epochs": 2}
        job = train(client, body)
        assert job["status"] == "succeeded", (stem, job["error"])
        assert len(job["history"]) == 2
