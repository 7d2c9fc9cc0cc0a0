"""The `advrobust` command end to end: train, eval, YAML config, JSON output, and one-line errors."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from advrobust import __version__
from advrobust.cli import main
from advrobust.evaluation import load_results
from advrobust.models import read_card


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "advrobust", *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


def test_version_and_help() -> None:
    done = run_cli("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"advrobust {__version__}"
    helped = run_cli("eval", "--help")
    assert helped.returncode == 0
    for option in ("--model", "--eps", "--norm", "--attack", "--steps", "--json", "--config"):
        assert option in helped.stdout


def test_every_help_text_is_formatted() -> None:
    """argparse %-formats help strings but not descriptions: no escape or placeholder may show."""
    from advrobust.cli import _parser

    parser = _parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    texts = [parser.format_help()] + [sub.format_help() for sub in subparsers.choices.values()]
    assert len(texts) > 8
    for text in texts:
        assert "%%" not in text and "%(" not in text, text


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "mnist-std"
    code = main(
        ["train", "--data", "mnist-mini", "--epochs", "1", "--batch-size", "64", "--out", str(out), "--quiet"]
    )
    assert code == 0
    return out


def test_train_writes_a_run_directory(run_dir: Path) -> None:
    assert {p.name for p in run_dir.iterdir()} >= {
        "model.safetensors",
        "card.json",
        "checkpoint.pt",
        "history.json",
    }
    card = read_card(run_dir)
    assert card.arch == "small-cnn" and card.dataset == "mnist-mini"
    assert card.training["objective"]["name"] == "standard"
    assert card.metrics["clean_accuracy"] > 0.9


def test_eval_with_json(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.json"
    code = main(
        [
            "eval",
            "--model",
            str(run_dir),
            "--data",
            "mnist-mini",
            "--n",
            "200",
            "--eps",
            "0.1",
            "0.3",
            "--attack",
            "fgsm",
            "pgd",
            "--steps",
            "10",
            "--json",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "note: fgsm and pgd-10 only bound robust accuracy from above; `--suite standard`" in printed
    data = json.loads(out.read_text())
    assert data["schema"] == "advrobust.run/1"
    results = load_results(out)
    assert [r.threat["eps"] for r in results] == [0.1, 0.3]
    assert results[1].robust.value < results[0].robust.value < results[0].clean.value
    assert [a.name for a in results[0].attacks] == ["fgsm", "pgd"]
    assert results[0].attacks[1].params["steps"] == 10


def test_eval_table_is_whole_when_piped(run_dir: Path) -> None:
    """A log or pipe gets every column in full, one row per line (rich would cut it to 80 columns)."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    args = ["eval", "--model", str(run_dir), "--data", "mnist-mini", "--n", "20", "--eps", "0.3", "--quiet"]
    done = subprocess.run(
        [sys.executable, "-m", "advrobust", *args, "--suite", "standard"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert "\u2026" not in done.stdout  # rich's ellipsis for a cut cell
    header = next(line for line in done.stdout.splitlines() if "apgd-100" in line)
    for column in ("eps", "clean", "apgd-t-dlr-100", "fab-t-100", "square", "robust", "seconds"):
        assert column in header
    assert "after it and every attack before it (cascade)" in done.stdout
    assert "only bound robust accuracy" not in done.stdout  # the full suite ran


def test_eval_batch_size_auto(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "auto.json"
    args = ["eval", "--model", str(run_dir), "--data", "mnist-mini", "--n", "40", "--attack", "fgsm"]
    assert main([*args, "--batch-size", "auto", "--json", str(out), "--quiet"]) == 0
    assert load_results(out)[0].meta["batch_size"] == 256  # auto on a CPU
    capsys.readouterr()
    assert main([*args, "--amp", "--channels-last", "--json", str(out), "--quiet"]) == 0
    meta = load_results(out)[0].meta
    assert meta["acceleration"] == {"amp": True, "channels_last": True, "compile": False}
    assert "report robust accuracy from a float32 run" in meta["amp_note"]
    assert "warning: --amp ran the model in bf16" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([*args, "--batch-size", "0"])
    assert "positive integer or auto" in capsys.readouterr().err


def test_yaml_config_with_flag_override(run_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "eval.yaml"
    config.write_text(
        f"model: {run_dir}\ndata: mnist-mini\nn: 100\neps: 0.2\nattack: [fgsm]\njson: {tmp_path / 'a.json'}\n"
    )
    assert main(["eval", "--config", str(config), "--eps", "0.05", "--quiet"]) == 0
    [result] = load_results(tmp_path / "a.json")
    assert result.threat["eps"] == 0.05 and result.n == 100


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["eval", "--model", "no/such/run"], "no model at"),
        (["eval", "--model", "RUN", "--attack", "nope"], "unknown attack 'nope'"),
        (["eval", "--model", "RUN", "--attack", "fgsm", "--steps", "3"], "--steps applies to none"),
        (["eval", "--model", "RUN", "--eps", "-1"], "eps"),
        (["train", "--data", "no-such-data", "--out", "OUT"], "neither a known dataset"),
        (["train", "--data", "mnist", "--root", "EMPTY", "--out", "OUT"], "download"),
        (["train", "--epochs", "0", "--out", "OUT"], "epochs"),
    ],
)
def test_errors_are_one_line_without_traceback(
    args: list[str], message: str, run_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "empty").mkdir()
    swap = {"RUN": str(run_dir), "OUT": str(tmp_path / "o"), "EMPTY": str(tmp_path / "empty")}
    done = run_cli(*[swap.get(a, a) for a in args])
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert message in lines[0]


def test_bad_yaml_names_the_field(tmp_path: Path) -> None:
    config = tmp_path / "t.yaml"
    config.write_text("epochs: many\nbatch-size: 0\n")
    done = run_cli("train", "--config", str(config), "--out", str(tmp_path / "o"))
    assert done.returncode == 2
    assert "epochs" in done.stderr and "batch-size" in done.stderr
    config.write_text("unknown_option: 1\n")
    done = run_cli("train", "--config", str(config))
    assert done.returncode == 2 and "unknown-option" in done.stderr


def test_eval_quick_suite_with_curve(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "suite.json"
    code = main(
        [
            "eval",
            "--model",
            str(run_dir),
            "--n",
            "40",
            "--eps",
            "0.1",
            "--suite",
            "quick",
            "--curve",
            "--curve-points",
            "3",
            "--json",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    data = json.loads(out.read_text())
    assert data["results"][0]["attacks"][0]["name"] == "apgd"
    curve = data["meta"]["curve"]
    assert curve["eps"] == [0.0, 0.05, 0.1]
    assert curve["accuracy"][0] >= curve["accuracy"][-1]
    # The evaluation at eps 0.1 is folded into the curve and the curve into it: at that eps they agree.
    assert curve["sources"][-1] == "quick"
    assert curve["accuracy"][-1] == data["results"][0]["robust"]["value"]
    done = run_cli("eval", "--model", str(run_dir), "--suite", "quick", "--steps", "5")
    assert done.returncode == 2 and "suite's fixed recipe" in done.stderr


def test_audit_command(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "audit.json"
    code = main(
        [
            "audit",
            "--model",
            str(run_dir),
            "--n",
            "40",
            "--eps",
            "0.1",
            "--steps",
            "10",
            "--square-queries",
            "100",
            "--json",
            str(out),
            "--quiet",
        ]
    )
    data = json.loads(out.read_text())
    assert code == (1 if data["status"] == "fail" else 0)
    assert data["status"] != "fail", data["checks"]
    assert {c["name"] for c in data["checks"]} >= {
        "gradients",
        "budget",
        "white-box-beats-black-box",
        "convergence",
    }


def test_eval_state_file_resumes(run_dir: Path, tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    args = [
        "eval",
        "--model",
        str(run_dir),
        "--n",
        "60",
        "--batch-size",
        "20",
        "--eps",
        "0.1",
        "--attack",
        "pgd",
        "--steps",
        "3",
        "--state",
        str(state),
        "--quiet",
    ]
    assert main([*args, "--json", str(tmp_path / "a.json")]) == 0
    assert len(json.loads(state.read_text())["batches"]) == 3
    assert main([*args, "--json", str(tmp_path / "b.json")]) == 0  # everything already done: resumes all
    [first] = load_results(tmp_path / "a.json")
    [second] = load_results(tmp_path / "b.json")
    assert second.meta["resumed_batches"] == 3
    assert second.robust_correct == first.robust_correct
