"""examples/chapter_7_2.ipynb run as a reader runs it, cell by cell in a real Jupyter kernel (nbclient and
ipykernel), against the API served by uvicorn and a real worker; what its cells show is what the chapter says."""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow
NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "chapter_7_2.ipynb"


MARKUP = re.compile(r"<[^>]+>|\x1b\[[0-9;]*m")


def read_notebook() -> Any:
    return nbformat.read(NOTEBOOK, as_version=4)  # type: ignore[no-untyped-call]


def shown(cell: Any) -> str:
    """Everything a code cell showed, as text: what it printed, and its results' plain text and HTML with the
    tags and terminal colours taken out."""
    parts = []
    for output in cell.get("outputs", []):
        if output["output_type"] == "stream":
            parts.append(output["text"])
        elif output["output_type"] in ("execute_result", "display_data"):
            data = output["data"]
            parts += [data.get("text/plain", ""), data.get("text/html", "")]
    return html.unescape(MARKUP.sub("", "\n".join(parts)))


def test_the_notebook_is_committed_without_outputs() -> None:
    notebook = read_notebook()
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code
    assert all(not cell.outputs and cell.execution_count is None for cell in code)


def test_the_chapter_runs_through_the_client(live_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    notebook = read_notebook()
    # The kernel is a child of this process: the notebook reads the service's address from its environment.
    monkeypatch.setenv("TRAINSERVE_URL", live_url)
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()

    nbformat.write(notebook, tmp_path / "executed.ipynb")  # type: ignore[no-untyped-call]  # kept for a look after a failure
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    errors = [output for cell in code for output in cell.outputs if output["output_type"] == "error"]
    assert not errors, errors
    texts = [shown(cell) for cell in code]
    everything = "\n".join(texts)
    by_source = {cell.source.splitlines()[-1]: text for cell, text in zip(code, texts, strict=True)}

    assert f"Client('{live_url}')" in texts[0]
    assert "Total params: 7,510" in texts[1], "Keras' own summary"
    trained = by_source["print(f\"job {job.id}: {job.status}, held-out accuracy {job.evaluation['accuracy']:.4f}\")"]
    assert ": succeeded, held-out accuracy 0." in trained
    assert any(
        "<table>" in output.get("data", {}).get("text/html", "")
        for cell in code
        if "job.wait()" in cell.source
        for output in cell.outputs
    ), "the history as a table"
    assert any(
        "image/png" in output.get("data", {}) for cell in code if "job.plot()" in cell.source for output in cell.outputs
    ), "the curves are drawn"
    summary = by_source["trained.summary()"]
    assert "Total params: 7,510" in summary
    assert 'Model: "digits"' in summary
    assert re.search(r"predicted: \[\d( \d){7}\]\ntrue:      \[0 1 2 3 4 5 6 7\]", everything)
    assert "7-2 digits sigmoid: held-out accuracy" in everything
    assert "7-2 digits relu: held-out accuracy" in everything
    for label in ("sgd", "nesterov", "adam"):
        assert f"{label:9} val_accuracy " in everything
    assert "same predictions: True" in everything
