"""The command's malloc thresholds: fewer page faults per attack step, never set where the user chose."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import textwrap

import pytest

from advrobust.allocator import OPT_OUT, tune_malloc, user_chose_allocator

# A small CNN's input gradient at batch 100, the inner step of every attack; page faults per step.
_STEPS = textwrap.dedent(
    """
    import json, resource, sys, torch
    from torch import nn
    from advrobust import cli

    if sys.argv[1] == "run":
        cli.main = lambda argv=None: 0  # the command's start, without a subcommand
        cli.run()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 4, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 4, 2, 1), nn.ReLU(), nn.Flatten(),
        nn.Linear(1568, 10),
    )
    x = torch.rand(100, 1, 28, 28, requires_grad=True)
    for _ in range(3):
        torch.autograd.grad(model(x).sum(), x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        torch.autograd.grad(model(x).sum(), x)
    print(json.dumps((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20))
    """
)


def _faults_per_step(mode: str, **env: str) -> float:
    clean = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", OPT_OUT, "GLIBC_TUNABLES")}
    clean = {k: v for k, v in clean.items() if not k.startswith("MALLOC_")}
    out = subprocess.run(
        [sys.executable, "-c", _STEPS, mode],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return float(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_the_command_stops_the_page_faults_of_each_step() -> None:
    default = _faults_per_step("library")  # importing advrobust changes nothing
    tuned = _faults_per_step("run")
    assert tuned < default / 5, (tuned, default)
    # A user's own choice wins: with the opt-out the command keeps glibc's defaults.
    kept = _faults_per_step("run", **{OPT_OUT: "default"})
    assert kept > 3 * tuned, (kept, tuned)


def test_user_choices_are_respected() -> None:
    assert not user_chose_allocator({})
    assert not user_chose_allocator({"LD_PRELOAD": "libfoo.so", OPT_OUT: "tuned"})
    assert user_chose_allocator({OPT_OUT: "default"})
    assert user_chose_allocator({"MALLOC_TRIM_THRESHOLD_": "0"})
    assert user_chose_allocator({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=4096"})
    assert not user_chose_allocator({"GLIBC_TUNABLES": "glibc.rtld.optional_static_tls=2048"})
    assert user_chose_allocator({"MALLOC_ARENA_MAX": "2"})
    assert user_chose_allocator({"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"})
    assert tune_malloc(environ={OPT_OUT: "default"}) is False


def test_the_console_script_is_the_tuned_entry_point() -> None:
    scripts = importlib.metadata.entry_points(group="console_scripts")
    assert [e.value for e in scripts if e.name == "advrobust"] == ["advrobust.cli:run"]
