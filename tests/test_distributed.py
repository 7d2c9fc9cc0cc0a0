"""Sharded evaluation under torchrun (2 processes, gloo) equals the single-process result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
