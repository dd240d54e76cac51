"""Coverage-guided fuzzing of the parsers of untrusted bytes, for long runs: the same targets and the same rule as
the Hypothesis suite (tests/fuzz_targets.py: accepted, or refused with a 4xx-kind error, within a time and memory
bound), driven by atheris, which mutates toward inputs that reach new code.

    pip install -e '.[test,fuzz]'
    python -m tests.fuzz_atheris npz -runs=200000        # or csv, images, npy, v2; atheris' own flags follow

A failing input is written to the working directory (crash-…) and can be replayed by passing its path.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from tests import fuzz_targets


def _targets() -> dict[str, Callable[[bytes], object]]:
    engine = fuzz_targets.engine_for_fuzzing(Path(tempfile.mkdtemp(prefix="fuzz-atheris-")))
    return {
        "npz": lambda data: fuzz_targets.dataset_file("npz", data),
        "csv": lambda data: fuzz_targets.dataset_file("csv", data),
        "images": lambda data: fuzz_targets.dataset_file("images", data),
        "npy": lambda data: fuzz_targets.npy_body(data, engine),
        "json": lambda data: fuzz_targets.json_predict_body(data, engine),
        "v1": lambda data: fuzz_targets.tf_serving_body(data, engine),
        "v2": lambda data: fuzz_targets.open_inference_body(data, str(data[:1][0] % 64) if data else None, engine),
        "spec": fuzz_targets.train_spec,
    }


def main() -> None:
    import atheris

    if len(sys.argv) < 2 or sys.argv[1] not in ("npz", "csv", "images", "npy", "json", "v1", "v2", "spec"):
        raise SystemExit(__doc__)
    name = sys.argv.pop(1)
    target = _targets()[name]
    atheris.instrument_all()  # the service's parsers (and what they call) report the code each input reaches
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
