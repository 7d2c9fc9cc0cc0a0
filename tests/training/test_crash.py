"""Crash safety: a training run killed with SIGKILL resumes to the uninterrupted run's exact weights."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from advrobust.errors import ModelFileError
from advrobust.models import load_model
from advrobust.training import CHECKPOINT_NAME, load_checkpoint

ARGS = ["train", "--epochs", "3", "--batch-size", "32", "--optimizer", "sgd", "--lr", "0.05", "--quiet"]


def _train(out: Path, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "advrobust", *ARGS, "--out", str(out), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_sigkill_mid_epoch_then_resume_gives_identical_weights(tmp_path: Path) -> None:
    straight = _train(tmp_path / "straight")
    assert straight.wait(timeout=600) == 0, straight.stderr.read() if straight.stderr else ""

    victim = _train(tmp_path / "killed")
    checkpoint = tmp_path / "killed" / CHECKPOINT_NAME
    deadline = time.monotonic() + 600
    while not checkpoint.exists():  # epoch 1 is done and saved: epoch 2 is running
        assert victim.poll() is None, "the run finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.3)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL
    epoch = int(load_checkpoint(checkpoint)["epoch"])
    assert 1 <= epoch < 3  # killed mid-run, the checkpoint on disk is whole
    assert not (tmp_path / "killed" / "model.safetensors").exists()

    resumed = _train(tmp_path / "killed", "--resume")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read() if resumed.stderr else ""
    a, b = load_model(tmp_path / "straight"), load_model(tmp_path / "killed")
    for (name, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(p, q), name


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=4096), cut=st.integers(0, 4096))
def test_random_and_truncated_checkpoints_are_refused_cleanly(tmp_path: Path, data: bytes, cut: int) -> None:
    path = tmp_path / "ckpt.pt"
    path.write_bytes(data[:cut])
    try:
        load_checkpoint(path)
    except ModelFileError:
        return
    raise AssertionError("random bytes were accepted as a checkpoint")


def test_a_foreign_pickle_header_is_refused_with_our_error_alone(tmp_path: Path) -> None:
    # A pickle protocol byte torch does not know (0x80 0xd9: protocol 217) made torch warn before failing.
    path = tmp_path / "ckpt.pt"
    path.write_bytes(b"\x80\xd9" + bytes(40))
    # (Recorded, not turned into errors: load_checkpoint would turn such an error into its own.)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ModelFileError, match="corrupt, truncated"):
            load_checkpoint(path)
    assert [str(w.message) for w in caught] == []
