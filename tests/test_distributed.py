"""Sharded evaluation under torchrun (2 processes, gloo) equals the single-process result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from advrobust.cli import main
from advrobust.distributed import gather_objects, info


def test_without_torchrun_everything_is_one_process() -> None:
    assert info().world_size == 1 and info().is_main
    assert gather_objects({"a": 1}) == [{"a": 1}]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist") / "run"
    assert main(["train", "--epochs", "1", "--batch-size", "64", "--out", str(out), "--quiet"]) == 0
    return out


def test_two_process_sharded_eval_matches_single_process(tiny_run: Path, tmp_path: Path) -> None:
    common = [
        "eval",
        "--model",
        str(tiny_run),
        "--samples",
        "100",
        "--batch-size",
        "20",
        "--eps",
        "0.1",
        "--attack",
        "fgsm",
        "pgd",
        "--steps",
        "5",
        "--quiet",
    ]
    assert main([*common, "--json", str(tmp_path / "one.json")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "advrobust",
            *common,
            "--json",
            str(tmp_path / "two.json"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    one = json.loads((tmp_path / "one.json").read_text())
    two = json.loads((tmp_path / "two.json").read_text())
    assert two["meta"]["processes"] == 2 and one["meta"]["processes"] == 1
    r1, r2 = one["results"][0], two["results"][0]
    assert r2["per_sample"] == r1["per_sample"]
    assert r2["robust"] == r1["robust"] and r2["clean"] == r1["clean"]
    assert [a["attacked"] for a in r2["attacks"]] == [a["attacked"] for a in r1["attacks"]]


def _torchrun(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "advrobust",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )


def test_two_process_ddp_training_matches_one_process_with_the_global_batch(tmp_path: Path) -> None:
    # 2 processes x batch 32 see the same global batches as 1 process x batch 64 (DistributedSampler order),
    # and DDP averages the gradients: the weights agree up to float summation order.
    from advrobust.models import load_model, read_card

    data = tmp_path / "d.npz"
    import numpy as np

    from advrobust.data import load_dataset

    mini = load_dataset("mnist-mini", split="train").take(512)
    np.savez(data, x=mini.images.numpy(), y=mini.labels.numpy())
    common = ["train", "--data", str(data), "--epochs", "2", "--optimizer", "sgd", "--lr", "0.05", "--quiet"]
    assert main([*common, "--batch-size", "64", "--out", str(tmp_path / "one")]) == 0
    done = _torchrun(*common, "--batch-size", "32", "--out", str(tmp_path / "two"))
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = load_model(tmp_path / "one"), load_model(tmp_path / "two")
    for (name, a), (_, b) in zip(one.state_dict().items(), two.state_dict().items(), strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), name
    assert read_card(tmp_path / "two").training["samples"] == 512


def _fast_at(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """One epoch of fast-at at linf 0.1 on 2 processes (batch 50 each), robust validation on 100 images."""
    return _torchrun(
        "train",
        "--defense",
        "fast-at",
        *extra,
        "--eps",
        "0.1",
        "--epochs",
        "1",
        "--batch-size",
        "50",
        "--robust-val",
        "100",
        "--out",
        str(out),
        "--quiet",
    )


def test_two_process_adversarial_training_runs(tmp_path: Path) -> None:
    done = _fast_at(tmp_path / "fast")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "fast" / "model.safetensors").exists()


def test_two_process_fast_at_prior_start_keeps_every_process_perturbations(tmp_path: Path) -> None:
    # Each process trains on its own shard, but the per-sample perturbations are shared at every step: after
    # one epoch the checkpoint (written by rank 0) holds one for every training sample, not half of them.
    # The prior-guided regularizer's second training forward goes through DDP as well.
    from advrobust.training.checkpoint import load_checkpoint
    from advrobust.training.trainer import CHECKPOINT_NAME

    out = tmp_path / "prior"
    done = _fast_at(out, "--data", "mnist-mini", "--prior-start", "--prior-reg", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    state = load_checkpoint(out / CHECKPOINT_NAME)["objective_state"]
    seen = state["seen"]
    assert seen.dtype == torch.bool and bool(seen.all())
    assert seen.shape[0] == state["codes"].shape[0] == state["scales"].shape[0] > 100
    from advrobust.models import read_card

    assert read_card(out).training["objective"]["prior_reg"] == 1


def test_a_resume_refused_on_one_process_stops_both(tiny_run: Path, tmp_path: Path) -> None:
    state = tmp_path / "eval.state"
    common = ["eval", "--model", str(tiny_run), "--batch-size", "20", "--eps", "0.1", "--attack", "fgsm"]
    done = _torchrun(*common, "--samples", "100", "--state", str(state), "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    # 80 samples: batches 0-3. Rank 1 (batches 1, 3) finds all of its batches; rank 0's state also holds
    # batch 4, which the data no longer has. Both must stop with the refusal (neither waiting for the other).
    refused = _torchrun(*common, "--samples", "80", "--state", str(state), "--quiet")
    assert refused.returncode != 0
    assert "fewer samples than when it was written" in refused.stderr
