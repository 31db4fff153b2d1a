"""Property: whatever small combination of flags ``mnist-train`` gets, it ends with a documented
exit code, without a traceback, and publishes a whole version or nothing.

Hypothesis draws the flags (fixed seed, bounded number of examples, tiny limits, so CI stays
fast); the CLI runs in-process through ``training.cli.main`` as the entry point does.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from service.model.repository import ModelRepository
from training.cli import main
from training.pipeline import EXIT_BELOW_GATE, EXIT_OK, EXIT_USAGE

#: what random flags may end in: published, refused (settings), under the gate
EXPECTED = {EXIT_OK, EXIT_USAGE, EXIT_BELOW_GATE}


@st.composite
def flag_sets(draw: st.DrawFn) -> list[str]:
    solver = draw(st.sampled_from(["adam", "sgd", "lbfgs"]))
    layers = draw(st.lists(st.integers(1, 12), min_size=1, max_size=2))
    argv = ["--solver", solver, "--hidden-layers", ",".join(map(str, layers))]
    argv += ["--activation", draw(st.sampled_from(["identity", "logistic", "tanh", "relu"]))]
    argv += ["--epochs", str(draw(st.integers(1, 3)))]
    argv += ["--train-limit", str(draw(st.integers(1, 300)))]
    argv += ["--seed", str(draw(st.integers(0, 3)))]
    optional = {
        "--validation-fraction": st.sampled_from(["0", "0.05", "0.1", "0.3", "0.5", "0.9"]),
        "--batch-size": st.sampled_from(["auto", "1", "7", "64", "1000"]),
        "--patience": st.integers(1, 3).map(str),
        "--augment-copies": st.integers(0, 2).map(str),
        "--min-accuracy": st.sampled_from(["0", "0.3", "0.999"]),
        "--momentum": st.sampled_from(["0.5", "0.9"]),
        "--learning-rate-init": st.sampled_from(["0.001", "0.1"]),
    }
    for flag, values in optional.items():
        if draw(st.booleans()):
            argv += [flag, draw(values)]
    for switch in ("--early-stopping", "--augment", "--shuffle"):
        choice = draw(st.sampled_from([None, "on", "off"]))
        if choice is not None:
            argv.append(switch if choice == "on" else "--no-" + switch[2:])
    return argv


@seed(20261130)
@settings(
    max_examples=12,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(argv=flag_sets())
def test_any_small_flag_combination_ends_cleanly(argv: list[str], mnist_data_dir: Path) -> None:
    err = io.StringIO()
    with tempfile.TemporaryDirectory() as folder:
        models = Path(folder)
        full = [*argv, "--progress", "none", "--data-dir", str(mnist_data_dir)]
        full += ["--models-dir", str(models)]
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = main(full)
            except SystemExit as exc:  # argparse's own refusals
                code = int(exc.code or 0)
        versions = ModelRepository(models).versions()
        model_dir = models / "mnist"
        leftovers = list(model_dir.glob(".staging-*")) if model_dir.is_dir() else []
    text = err.getvalue()
    assert code in EXPECTED, (argv, code, text)
    assert "Traceback" not in text
    assert leftovers == []
    if code == EXIT_OK:
        assert [v.version for v in versions] == [1]
    else:
        assert versions == []
        assert len(text.strip().splitlines()) == 1, text  # one line saying why
