"""The benchmark scripts (issue 8's deliverables) run end to end from a clean checkout, on real MNIST.

Not timings (those live in ``benchmarks/RESULTS.md``): each script is run as a subprocess on a few images and
its JSON is checked. The peer libraries are not part of the test set-up, so their cases must be reported as
failed cases naming the missing module, not crash the run; where a peer is installed, its cases must succeed.
The AutoAttack script's verdict pairing is also checked directly, on made-up cases.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from torch import nn

from advrobust.models import ModelCard, save_model

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
#: Never wait for a quiet machine in a test, and never leave a case running for long.
QUICK = ["--max-load", "1000", "--load-tries", "1", "--threads", "1", "--timeout", "300"]
#: Each peer's distribution and the module its adapter imports.
PEERS = {"torchattacks": ("torchattacks", "torchattacks"), "art": ("adversarial-robustness-toolbox", "art")}


def _installed(peer: str) -> bool:
    try:
        importlib.metadata.version(PEERS[peer][0])
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _check_peer(case: dict[str, Any], peer: str) -> None:
    """A peer's case: done where the peer is installed, else an error saying which module is missing."""
    if _installed(peer):
        assert case["status"] == "ok", case.get("error")
    else:
        assert case["status"] == "error"
        assert f"No module named '{PEERS[peer][1]}'" in case["error"]


def _check_attack_case(case: dict[str, Any]) -> None:
    assert case["status"] == "ok", case.get("error")
    assert case["eps_violations"] == 0
    assert case["bounds_violations"] == 0
    assert 0 <= case["robust_accuracy"] <= case["clean_accuracy"]
    assert case["seconds"] > 0


@pytest.fixture(scope="module")
def bench_models(tmp_path_factory: pytest.TempPathFactory, trained_cnn: nn.Module) -> Path:
    """A ``train_models.py``-style folder: the session's normally trained small-cnn under both names.

    (The scripts read the run directories by name; what is tested here is the plumbing, not the models.)
    """
    if not os.environ.get("ADVROBUST_DATA"):
        pytest.skip("set ADVROBUST_DATA to the folder holding the real MNIST files to run this test")
    root = tmp_path_factory.mktemp("bench-models")
    card = ModelCard.from_model(trained_cnn, input_shape=(1, 28, 28))
    for name in ("mnist-standard", "mnist-fast-at"):
        save_model(trained_cnn, root / name, card)
    return root


def _run(script: str, args: list[str], data: Path, out: Path) -> dict[str, Any]:
    """Run ``benchmarks/<script> <args> --out <out>``; its JSON, plus its stdout."""
    env = {**os.environ, "ADVROBUST_DATA": str(data), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    report: dict[str, Any] = json.loads(out.read_text())
    report["_stdout"] = proc.stdout
    return report


@pytest.mark.slow
def test_compare_attacks_runs_and_checks_every_example(
    real_mnist_root: Path, bench_models: Path, tmp_path: Path
):
    report = _run(
        "compare_attacks.py",
        [
            "--models", str(bench_models), "--model", "mnist-standard",
            "--n", "40", "--batch-size", "20", "--attacks", "fgsm,pgd40-linf,apgd-ce,square,cw-l2",
            "--libraries", "advrobust,torchattacks", "--skip-resnet", "--rounds", "1", "--repeat-under", "0",
            *QUICK,
        ],
        real_mnist_root,
        tmp_path / "compare.json",
    )  # fmt: skip
    cases = {(c["library"], c["attack"]): c for c in report["cases"]}
    attacks = ("fgsm", "pgd40-linf", "apgd-ce", "square", "cw-l2")
    assert set(cases) == {(lib, a) for lib in ("advrobust", "torchattacks") for a in attacks}
    for attack in attacks:
        ours = cases[("advrobust", attack)]
        assert ours["status"] == "ok", ours.get("error")
        assert ours["bounds_violations"] == 0
        if attack != "cw-l2":  # minimum-norm: no eps-ball to stay in
            _check_attack_case(ours)
        _check_peer(cases[("torchattacks", attack)], "torchattacks")
    # CW: one distance per image where it succeeded, None elsewhere.
    cw = cases[("advrobust", "cw-l2")]
    found = [d for d in cw["l2_success"] if d is not None]
    assert len(cw["l2_success"]) == 40
    assert len(found) == round(cw["success_rate"] * cw["clean_correct"]) > 0
    assert sum(found) / len(found) == pytest.approx(cw["mean_l2_success"], rel=1e-5)
    # A normally trained CNN at linf 0.3: PGD-40 and APGD break every image (FGSM does not have to).
    assert cases[("advrobust", "pgd40-linf")]["clean_accuracy"] > 0.8
    assert cases[("advrobust", "pgd40-linf")]["robust_accuracy"] == 0
    assert cases[("advrobust", "apgd-ce")]["robust_accuracy"] == 0


@pytest.mark.slow
def test_autoattack_script_runs_the_suite_at_both_budgets(
    real_mnist_root: Path, bench_models: Path, tmp_path: Path
):
    # eps 0.05: small enough that APGD-CE leaves samples standing, so every member of both suites runs.
    report = _run(
        "autoattack_mnist.py",
        [
            "--models", str(bench_models), "--model", "mnist-standard", "--n", "20", "--eps", "0.05",
            "--batch-size", "20", "--peer", "torchattacks", "--skip-context", "--rounds", "1",
            "--repeat-under", "0", *QUICK,
        ],
        real_mnist_root,
        tmp_path / "autoattack.json",
    )  # fmt: skip
    cases = {(c["library"], c["attack"]): c for c in report["cases"]}
    suite, budget = cases[("advrobust", "autoattack")], cases[("advrobust", "autoattack-parts")]
    for case in (suite, budget):
        _check_attack_case(case)
        assert case["eps"] == 0.05
        assert [a["name"] for a in case["per_attack"]] == ["apgd", "apgd", "fab", "square"]
        assert all(a["attacked"] > 0 for a in case["per_attack"]), case["per_attack"]
        assert case["robust_accuracy"] < case["clean_accuracy"]
    # The same members, the gradient ones at the reference's 100 iterations and at torchattacks' 10.
    assert suite["describe"][0].startswith("apgd(steps=100,")
    assert budget["describe"][:3] == [d.replace("(steps=100,", "(steps=10,") for d in suite["describe"][:3]]
    assert budget["describe"][3] == suite["describe"][3] == "square(queries=5000, p_init=0.8)"
    for attack in ("autoattack", "autoattack-parts", "autoattack-parts-100"):
        _check_peer(cases[("torchattacks", attack)], "torchattacks")
    pairs = {(v["peer_attack"], v["advrobust_attack"]) for v in report["verdicts"]}
    if _installed("torchattacks"):
        assert pairs == {
            ("autoattack", "autoattack"),
            ("autoattack", "autoattack-parts"),
            ("autoattack-parts-100", "autoattack"),
        }
    else:
        assert pairs == set()


@pytest.mark.slow
def test_compare_training_times_an_epoch(real_mnist_root: Path, tmp_path: Path):
    report = _run(
        "compare_training.py",
        ["--n", "400", "--warmup-n", "100", "--methods", "fast-at", "--rounds", "1", *QUICK],
        real_mnist_root,
        tmp_path / "training.json",
    )
    results = {r["library"]: r for r in report["results"]}
    assert set(results) == {"advrobust", "art", "plain"}
    for library in ("advrobust", "plain"):
        result = results[library]
        assert result["status"] == "ok", result.get("error")
        assert result["seconds"] > 0
        assert result["peak_rss_mb"] > 0
    _check_peer(results["art"], "art")
    # The ART ratio exists exactly when ART ran.
    assert bool(report["ratios"]) == (results["art"]["status"] == "ok")
    assert "fast-at as a bare PyTorch loop, threads 1" in report["_stdout"]


# ----------------------------------------------------------------------------- verdicts, made-up cases


def _import_script(monkeypatch: pytest.MonkeyPatch, name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as a module (the scripts import ``harness`` from their own folder)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module(name)


@pytest.fixture
def autoattack_script(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    return _import_script(monkeypatch, "autoattack_mnist")


def _case(
    library: str, attack: str, robust: float, seconds: float, n: int = 1000, **kw: Any
) -> dict[str, Any]:
    return {
        "library": library,
        "attack": attack,
        "model_name": "mnist-fast-at",
        "n": n,
        "status": "ok",
        "robust_accuracy": robust,
        "seconds": seconds,
        **kw,
    }


def test_verdicts_pair_each_peer_with_the_suite_at_its_budget(autoattack_script: ModuleType):
    cases = [
        _case("advrobust", "autoattack", 0.761, 361.0),
        _case("advrobust", "autoattack-parts", 0.763, 169.0),
        _case("advrobust", "autoattack", 0.70, 30.0, n=100),
        _case("torchattacks", "autoattack", 0.769, 201.0),
        _case("torchattacks", "autoattack-parts", 0.769, 206.0),
        _case("torchattacks", "autoattack-parts-100", 0.770, 568.0),
        _case("reference", "autoattack", 0.768, 560.0),
        _case("art", "autoattack", 0.72, 150.0, n=100),
        _case("art", "autoattack", 0.0, 1.0, n=50),  # no advrobust run on 50 images: no row
        _case("foolbox", "autoattack", 0.0, 1.0, status="error"),
    ]
    verdicts = autoattack_script.verdicts(cases)
    rows = {(v["peer_library"], v["peer_attack"], v["advrobust_attack"], v["n"]): v for v in verdicts}
    assert len(rows) == len(verdicts) == 5
    assert set(rows) == {
        ("torchattacks", "autoattack", "autoattack", 1000),
        ("torchattacks", "autoattack", "autoattack-parts", 1000),
        ("torchattacks", "autoattack-parts-100", "autoattack", 1000),
        ("reference", "autoattack", "autoattack", 1000),
        ("art", "autoattack", "autoattack", 100),
    }
    shipped = rows[("torchattacks", "autoattack", "autoattack", 1000)]
    assert shipped["time_ratio"] == pytest.approx(361.0 / 201.0)
    assert not shipped["time_ok"] and shipped["accuracy_ok"]
    equal = rows[("torchattacks", "autoattack", "autoattack-parts", 1000)]
    assert equal["advrobust_robust"] == 0.763 and equal["peer_robust"] == 0.769
    assert equal["time_ratio"] == pytest.approx(169.0 / 201.0) and equal["time_ok"]
    at_100 = rows[("torchattacks", "autoattack-parts-100", "autoattack", 1000)]
    assert at_100["time_ratio"] == pytest.approx(361.0 / 568.0)
    assert rows[("art", "autoattack", "autoattack", 100)]["advrobust_seconds"] == 30.0


def test_verdicts_in_l2_have_no_equal_budget_row(autoattack_script: ModuleType):
    cases = [
        _case("advrobust", "autoattack-l2", 0.30, 100.0),
        _case("torchattacks", "autoattack-l2", 0.32, 50.0),
        _case("reference", "autoattack-l2", 0.305, 120.0),
    ]
    rows = autoattack_script.verdicts(cases)
    assert {(v["peer_library"], v["advrobust_attack"]) for v in rows} == {
        ("torchattacks", "autoattack-l2"),
        ("reference", "autoattack-l2"),
    }
    assert all(v["accuracy_ok"] for v in rows)


@pytest.fixture
def compare_script(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    return _import_script(monkeypatch, "compare_attacks")


def _cw(library: str, l2: list[float | None], ips: float) -> dict[str, Any]:
    successes = [d for d in l2 if d is not None]
    return {
        "library": library,
        "attack": "cw-l2",
        "model_name": "mnist-fast-at",
        "status": "ok",
        "images_per_second": ips,
        "success_rate": len(successes) / len(l2),
        "mean_l2_success": sum(successes) / len(successes),
        "l2_success": l2,
    }


def _cw_goal(script: ModuleType, ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    (goal,) = [g for g in script.goals([ours, theirs], []) if g["goal"].startswith("CW-L2")]
    return goal


def test_cw_goal_compares_distances_on_the_images_both_fool(compare_script: ModuleType):
    # advrobust fools one more image, a far one: its mean over its own successes is higher, but on the
    # images both fool its distances are the same (up to float32 rounding) and the goal is met.
    ours = _cw("advrobust", [0.4, None, 0.5000001, 0.98], ips=90.0)
    theirs = _cw("torchattacks", [0.4, None, 0.5, None], ips=50.0)
    assert ours["mean_l2_success"] > theirs["mean_l2_success"]
    assert compare_script.common_l2(ours, theirs) == (2, pytest.approx(0.45000005), pytest.approx(0.45))
    goal = _cw_goal(compare_script, ours, theirs)
    assert goal["met"], goal["value"]
    assert "on the 2 both fool" in goal["value"]
    # Farther on the shared images, fewer successes, or slower: not met.
    farther = _cw("advrobust", [0.41, None, 0.5, 0.98], ips=90.0)
    assert not _cw_goal(compare_script, farther, theirs)["met"]
    fewer = _cw("advrobust", [0.4, None, None, None], ips=90.0)
    assert not _cw_goal(compare_script, fewer, theirs)["met"]
    slower = _cw("advrobust", [0.4, None, 0.5, 0.98], ips=40.0)
    assert not _cw_goal(compare_script, slower, theirs)["met"]
    # Without per-image distances (older JSON) there is nothing to compare on: not met.
    assert compare_script.common_l2({**ours, "l2_success": None}, theirs) == (0, None, None)
