"""The training loop: it learns, checkpoints atomically, and resumes to identical weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from advrobust.data import ImageDataset
from advrobust.errors import ConfigError, ModelFileError
from advrobust.fileio import atomic_writer
from advrobust.models import create_model
from advrobust.training import CHECKPOINT_NAME, TrainConfig, accuracy, load_checkpoint, train


def test_training_learns_mnist(trained_cnn: torch.nn.Module, mini_test: ImageDataset) -> None:
    assert accuracy(trained_cnn, mini_test) > 0.93


def _fresh(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("small-cnn", num_classes=10, in_channels=1)


def test_resume_ends_with_identical_weights(tmp_path: Path, mini_train: ImageDataset) -> None:
    data = mini_train.take(600)
    config = TrainConfig(epochs=3, batch_size=50, seed=7, optimizer="sgd", lr=0.05, schedule="cosine")
    straight = _fresh()
    history = train(straight, data, config=config, out_dir=tmp_path / "a").history

    # Real interruption: run epochs 1-2 with a callback that raises during epoch 3.
    class StopError(Exception):
        pass

    def stop_in_epoch_3(step) -> None:  # type: ignore[no-untyped-def]
        if step.epoch == 3 and step.step > 1:
            raise StopError

    killed = _fresh()
    with pytest.raises(StopError):
        train(killed, data, config=config, out_dir=tmp_path / "e", progress=stop_in_epoch_3)
    assert int(load_checkpoint(tmp_path / "e" / CHECKPOINT_NAME)["epoch"]) == 2
    resumed = _fresh(seed=123)  # different init: everything must come from the checkpoint
    result = train(resumed, data, config=config, out_dir=tmp_path / "e", resume=True)
    assert result.resumed_from == 2
    assert [h["loss"] for h in result.history] == [h["loss"] for h in history]
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_resume_refuses_other_settings(tmp_path: Path, mini_train: ImageDataset) -> None:
    data = mini_train.take(100)
    train(_fresh(), data, config=TrainConfig(epochs=1, batch_size=50), out_dir=tmp_path)
    with pytest.raises(ConfigError, match="other settings"):
        train(_fresh(), data, config=TrainConfig(epochs=2, batch_size=25), out_dir=tmp_path, resume=True)
    # More epochs with the same settings is fine.
    result = train(_fresh(), data, config=TrainConfig(epochs=2, batch_size=50), out_dir=tmp_path, resume=True)
    assert len(result.history) == 2


def test_corrupt_and_missing_checkpoints_are_refused(tmp_path: Path, mini_train: ImageDataset) -> None:
    with pytest.raises(ModelFileError, match="no checkpoint"):
        load_checkpoint(tmp_path / "nothing.pt")
    train(_fresh(), mini_train.take(100), config=TrainConfig(epochs=1, batch_size=50), out_dir=tmp_path)
    path = tmp_path / CHECKPOINT_NAME
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="corrupt, truncated"):
        load_checkpoint(path)
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ModelFileError, match="corrupt, truncated"):
        load_checkpoint(path)


def test_pickled_objects_in_checkpoints_are_refused(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"format": "advrobust.checkpoint/1", "x": Evil()}, path)
    with pytest.raises(ModelFileError, match="weights-only"):
        load_checkpoint(path)


def test_atomic_writer_keeps_old_file_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_writer(path) as handle:
        handle.write(b"half-written")
        raise RuntimeError("crash")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]
