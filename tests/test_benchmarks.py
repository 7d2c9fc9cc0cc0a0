"""The benchmark scripts run end to end from a clean checkout (issue 8's deliverables), on real MNIST.

Not timings (those live in ``benchmarks/RESULTS.md``): each script is run as its README gives it, on a
few images, and its JSON is checked. The peer libraries are not part of the test set-up, so their cases
must be reported as failed cases, not crash the run; where a peer is installed, its cases must succeed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from torch import nn

from advrobust.models import ModelCard, save_model

pytestmark = pytest.mark.slow

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
#: Never wait for a quiet machine in a test.
NO_WAIT = ["--max-load", "1000", "--load-tries", "1", "--threads", "1"]


@pytest.fixture(scope="module")
def bench_models(tmp_path_factory: pytest.TempPathFactory, trained_cnn: nn.Module) -> Path:
    """A ``train_models.py``-style folder: the session's normally trained small-cnn under both names.

    (The scripts read the run directories by name; what is tested here is the plumbing, not the models.)
    """
    root = tmp_path_factory.mktemp("bench-models")
    card = ModelCard.from_model(trained_cnn, input_shape=(1, 28, 28))
    for name in ("mnist-standard", "mnist-fast-at"):
        save_model(trained_cnn, root / name, card)
    return root


def _run(script: str, args: list[str], data: Path, out: Path, timeout: float = 600) -> dict[str, Any]:
    """Run ``benchmarks/<script> <args> --out <out>`` as a user would; its JSON, plus its stdout."""
    env = {**os.environ, "ADVROBUST_DATA": str(data), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    report: dict[str, Any] = json.loads(out.read_text())
    report["_stdout"] = proc.stdout
    return report


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _check_peer(case: dict[str, Any], module: str) -> None:
    """A peer's case: done where the peer is installed, an error naming the missing module where not."""
    if _installed(module):
        assert case["status"] == "ok", case.get("error")
    else:
        assert case["status"] == "error"
        assert module in case["error"]


def _check_attack_case(case: dict[str, Any]) -> None:
    assert case["status"] == "ok", case.get("error")
    assert case["eps_violations"] == 0
    assert case["bounds_violations"] == 0
    assert 0 <= case["robust_accuracy"] <= case["clean_accuracy"]
    assert case["seconds"] > 0


def test_compare_attacks_runs_and_checks_every_example(
    bench_models: Path, real_mnist_root: Path, tmp_path: Path
):
    report = _run(
        "compare_attacks.py",
        [
            "--models", str(bench_models), "--model", "mnist-standard",
            "--n", "40", "--batch-size", "20", "--attacks", "fgsm,pgd40-linf,apgd-ce,square",
            "--libraries", "advrobust,torchattacks", "--skip-resnet", "--rounds", "1", "--repeat-under", "0",
            "--warmup-n", "4", *NO_WAIT,
        ],
        real_mnist_root,
        tmp_path / "compare.json",
    )  # fmt: skip
    cases = {(c["library"], c["attack"]): c for c in report["cases"]}
    for attack in ("fgsm", "pgd40-linf", "apgd-ce", "square"):
        ours = cases[("advrobust", attack)]
        _check_attack_case(ours)
        assert ours["n"] == 40
        assert ours["warmup_n"] == 4
        _check_peer(cases[("torchattacks", attack)], "torchattacks")
    # A normally trained CNN at linf 0.3: PGD-40 and APGD break every image; FGSM does not have to.
    assert cases[("advrobust", "pgd40-linf")]["clean_accuracy"] > 0.8
    assert cases[("advrobust", "pgd40-linf")]["robust_accuracy"] == 0
    assert cases[("advrobust", "apgd-ce")]["robust_accuracy"] == 0
    assert "advrobust" in report["_stdout"]


def test_autoattack_script_compares_the_suite_at_both_budgets(
    bench_models: Path, real_mnist_root: Path, tmp_path: Path
):
    report = _run(
        "autoattack_mnist.py",
        [
            "--models", str(bench_models), "--model", "mnist-standard", "--n", "30",
            "--batch-size", "15", "--peer", "torchattacks", "--skip-context", "--rounds", "1",
            "--repeat-under", "0", *NO_WAIT,
        ],
        real_mnist_root,
        tmp_path / "autoattack.json",
    )  # fmt: skip
    cases = {(c["library"], c["attack"]): c for c in report["cases"]}
    suite, budget = cases[("advrobust", "autoattack")], cases[("advrobust", "autoattack-parts")]
    for case in (suite, budget):
        _check_attack_case(case)
        assert case["robust_accuracy"] == 0
        assert [a["name"] for a in case["per_attack"]] == ["apgd", "apgd", "fab", "square"]
    # The same suite, once at the reference's 100 iterations and once at torchattacks' shipped 10.
    assert all("(steps=100," in d for d in suite["describe"][:3])
    assert all("(steps=10," in d for d in budget["describe"][:3])
    assert suite["describe"][3] == budget["describe"][3] == "square(queries=5000, p_init=0.8)"
    for attack in ("autoattack", "autoattack-parts", "autoattack-parts-100"):
        _check_peer(cases[("torchattacks", attack)], "torchattacks")
    labels = {v["peer"] for v in report["verdicts"]}
    if _installed("torchattacks"):
        assert "torchattacks (advrobust at its 10 steps)" in labels
    else:
        assert labels == set()


def test_compare_training_times_an_epoch(real_mnist_root: Path, tmp_path: Path):
    report = _run(
        "compare_training.py",
        ["--n", "400", "--warmup-n", "100", "--methods", "fast-at", "--rounds", "1", *NO_WAIT],
        real_mnist_root,
        tmp_path / "training.json",
    )
    results = {r["library"]: r for r in report["results"]}
    assert set(results) == {"advrobust", "art", "plain"}
    for library in ("advrobust", "plain"):
        result = results[library]
        assert result["status"] == "ok", result.get("error")
        assert result["n"] == 400
        assert result["seconds"] > 0
        assert result["peak_rss_mb"] > 0
    _check_peer(results["art"], "art")
    # The ART ratio exists exactly when ART ran.
    assert bool(report["ratios"]) == (results["art"]["status"] == "ok")
    assert "fast-at as a bare PyTorch loop" in report["_stdout"]
