"""mnist-train sweep: the table, the run list, the plot, --publish-best, and a Dask cluster."""

from __future__ import annotations

import csv
import io
import json
import os
import statistics
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from service.model.repository import ModelRepository
from training import sweep
from training.config import ConfigError, TrainConfig

#: the smallest runs that still train: a few seconds each, most of it export and report
TINY_FLAGS = [
    "--hidden-layers",
    "16",
    "--epochs",
    "3",
    "--train-limit",
    "1000",
    "--batch-size",
    "50",
]


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))


@pytest.fixture(scope="module")
def published_sweep(tmp_path_factory: pytest.TempPathFactory, mnist_data_dir: Path) -> Any:
    """A 2 x 2 x 2 sweep run through main() with two loky workers and --publish-best."""
    out = tmp_path_factory.mktemp("sweep")
    models = tmp_path_factory.mktemp("models")
    argv = [
        "--activations", "relu,tanh",
        "--solvers", "adam,lbfgs",
        "--seeds", "0,1",
        *TINY_FLAGS,
        "--data-dir", str(mnist_data_dir),
        "--out", str(out),
        "--jobs", "2",
        "--publish-best",
        "--models-dir", str(models),
    ]  # fmt: skip
    code = sweep.main(argv)
    return code, out, models


def test_sweep_writes_the_table_runs_and_plot(published_sweep: Any) -> None:
    code, out, _ = published_sweep
    assert code == sweep.EXIT_OK
    runs = _rows(out / sweep.RUNS_CSV)
    assert len(runs) == 8
    assert {(r["activation"], r["solver"], r["seed"]) for r in runs} == {
        (a, s, seed) for a in ("relu", "tanh") for s in ("adam", "lbfgs") for seed in ("0", "1")
    }
    assert all(r["parity_passed"] == "True" for r in runs)
    assert all(0.2 < float(r["test_accuracy"]) <= 1.0 for r in runs)  # chance is 0.1
    # adam runs the requested epochs; lbfgs reports its iterations
    assert {r["epochs"] for r in runs if r["solver"] == "adam"} == {"3"}
    assert {r["epoch_unit"] for r in runs if r["solver"] == "lbfgs"} == {"iteration"}

    table = _rows(out / sweep.RESULTS_CSV)
    assert len(table) == 4
    means = [float(row["accuracy_mean"]) for row in table]
    assert means == sorted(means, reverse=True)
    for row in table:
        mine = [
            float(r["test_accuracy"])
            for r in runs
            if (r["activation"], r["solver"]) == (row["activation"], row["solver"])
        ]
        assert float(row["accuracy_mean"]) == pytest.approx(statistics.fmean(mine))
        assert float(row["accuracy_std"]) == pytest.approx(statistics.stdev(mine))
        assert row["runs"] == "2"

    markdown = (out / sweep.RESULTS_MD).read_text(encoding="utf-8")
    assert markdown.count("\n| relu | adam | 2 |") == 1 and "mnist-train sweep" in markdown
    assert "](loss_curves.png)" in markdown

    with Image.open(out / sweep.LOSS_CURVES_PNG) as plot:
        assert plot.format == "PNG"
        assert plot.size == (1000, 600)  # LOSS_FIGSIZE x DPI


def test_runs_went_to_worker_processes(published_sweep: Any) -> None:
    _, out, _ = published_sweep
    pids = {r["worker"].rsplit(":", 1)[1] for r in _rows(out / sweep.RUNS_CSV)}
    assert str(os.getpid()) not in pids


def test_publish_best_publishes_the_best_by_validation(published_sweep: Any) -> None:
    _, out, models = published_sweep
    versions = ModelRepository(models).versions()
    assert [v.version for v in versions] == [1]
    _, card = versions[0].read_verified()
    runs = _rows(out / sweep.RUNS_CSV)
    best_validation = max(float(r["validation_accuracy"]) for r in runs)
    assert card["metrics"]["validation_accuracy"] == pytest.approx(best_validation)
    assert (versions[0].path / "report" / "summary.md").is_file()
    assert (versions[0].path / "selftest.json").is_file()


def test_without_publish_best_nothing_is_published(
    tmp_path: Path, mnist_data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = tmp_path / "models"
    argv = [
        "--activations", "logistic", "--solvers", "sgd", *TINY_FLAGS,
        "--data-dir", str(mnist_data_dir), "--out", str(tmp_path / "out"),
        "--models-dir", str(models),
    ]  # fmt: skip
    assert sweep.main(argv) == sweep.EXIT_OK
    assert not models.exists()
    assert len(_rows(tmp_path / "out" / sweep.RUNS_CSV)) == 1
    assert "| logistic | sgd | 1 |" in capsys.readouterr().out


def test_the_same_sweep_runs_on_a_dask_cluster(tmp_path: Path, mnist_data_dir: Path) -> None:
    """A local Dask cluster (two worker processes on 127.0.0.1) runs the runs, not this process."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):
        worker_pids = {str(pid) for pid in client.run(os.getpid).values()}
        argv = [
            "--activations", "relu", "--solvers", "adam", "--seeds", "0,1", *TINY_FLAGS,
            "--data-dir", str(mnist_data_dir), "--out", str(tmp_path),
            "--dask-scheduler", cluster.scheduler_address, "--jobs", "-1",
        ]  # fmt: skip
        assert sweep.main(argv) == sweep.EXIT_OK
    runs = _rows(tmp_path / sweep.RUNS_CSV)
    assert len(runs) == 2
    assert {r["worker"].rsplit(":", 1)[1] for r in runs} <= worker_pids
    assert (tmp_path / sweep.LOSS_CURVES_PNG).is_file()


def test_unreachable_dask_scheduler_fails_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    # a port nothing listens on: bound (connections are refused) and held for the whole run,
    # so that no other process can start listening on it meanwhile
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        argv = [
            "--activations", "relu", "--solvers", "adam", "--out", str(tmp_path / "out"),
            "--dask-scheduler", f"tcp://127.0.0.1:{port}", "--dask-timeout", "1",
        ]  # fmt: skip
        assert sweep.main(argv) == sweep.EXIT_CLUSTER
    assert f"cannot reach the Dask scheduler tcp://127.0.0.1:{port}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--activations", "relu,swish"], "activations"),
        (["--solvers", ""], "solvers"),
        (["--seeds", "0,x"], "seeds"),
        (["--activation", "relu"], "--activations"),
        (["--jobs", "0"], "--jobs"),
    ],
)
def test_bad_flags_fail_before_training(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        sweep.main([*argv, "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_impossible_value_is_a_configuration_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:  # argparse checks the range, as mnist-train does
        sweep.main(["--alpha", "-1", "--out", str(tmp_path)])
    assert caught.value.code == sweep.EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--alpha: -1.0 is out of range >= 0" in err


def _result(activation: str, solver: str, seed: int, test: float, val: float | None) -> Any:
    return sweep.RunResult(
        activation=activation, solver=solver, seed=seed, test_accuracy=test, log_loss=0.1,
        validation_accuracy=val, epochs=3, epoch_unit="epoch", train_seconds=1.0, seconds=2.0,
        loss_curve=[1.0, 0.5], final_loss=0.5, stop_reason="max_iter reached",
        parity_passed=True, worker="h:1",
    )  # fmt: skip


def test_summarise_ranks_on_validation_and_measures_spread() -> None:
    results = [
        _result("relu", "adam", 0, 0.90, 0.91),
        _result("relu", "adam", 1, 0.94, 0.93),
        _result("tanh", "sgd", 0, 0.95, 0.90),
    ]
    rows = sweep.summarise(results)
    # tanh/sgd has the better test accuracy, relu/adam the better validation accuracy
    assert [(r["activation"], r["solver"]) for r in rows] == [("relu", "adam"), ("tanh", "sgd")]
    assert rows[0]["val_accuracy_mean"] == pytest.approx(0.92)
    assert rows[0]["accuracy_mean"] == pytest.approx(0.92)
    assert rows[0]["accuracy_std"] == pytest.approx(statistics.stdev([0.90, 0.94]))
    assert rows[1]["accuracy_std"] == 0.0


def test_choose_best_chooses_on_validation_never_on_test() -> None:
    results = [_result("relu", "adam", 0, 0.99, 0.90), _result("tanh", "adam", 0, 0.95, 0.97)]
    best, criterion = sweep.choose_best(results)
    assert (best.activation, criterion) == ("tanh", "validation accuracy")
    no_validation = [_result("relu", "adam", 0, 0.99, None), results[1]]
    with pytest.raises(ConfigError, match="--validation-fraction above 0"):
        sweep.choose_best(no_validation)


def test_plan_crosses_every_combination() -> None:
    plan = sweep.SweepPlan(TrainConfig(), ("relu",), ("adam", "sgd"), (0, 1, 2))
    configs = plan.configs()
    assert len(configs) == 6
    assert {(c.solver, c.seed) for c in configs} == {
        (s, seed) for s in ("adam", "sgd") for seed in (0, 1, 2)
    }
    assert all(c.progress == "none" for c in configs)


def test_loss_plot_marks_lbfgs_final_loss_and_survives_no_curves() -> None:
    lbfgs = _result("relu", "lbfgs", 0, 0.5, None)
    lbfgs.loss_curve = []  # lbfgs reports only its final loss
    nothing = _result("relu", "lbfgs", 0, 0.5, None)
    nothing.loss_curve, nothing.final_loss = [], None
    with_marker, empty = sweep.loss_curves_png([lbfgs]), sweep.loss_curves_png([nothing])
    for png in (with_marker, empty):
        with Image.open(io.BytesIO(png)) as image:
            assert image.size == (1000, 600)
    assert with_marker != empty
    assert json.dumps(sweep._run_rows([lbfgs]))  # plain data all the way down


def test_publish_best_without_a_validation_split_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = sweep.main(
        ["--publish-best", "--validation-fraction", "0", "--out", str(tmp_path / "out")]
    )
    assert code == 2
    assert "--publish-best chooses on the validation split" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
