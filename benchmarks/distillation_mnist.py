"""Issue 6 on full MNIST: defensive distillation (Papernot et al. 2016) and robust distillation (ARD).

Part ``defensive``: for each ``--temperatures`` T, ``advrobust.runs.train_run`` with ``defense="distillation"``
and no teacher, which is what ``advrobust train --defense distillation --temperature T`` runs: a small CNN
teacher trained with ``temperature-ce`` at T, then a fresh small CNN student on its soft labels at T, both
deployed at T = 1 (raw logits). Teacher and student are evaluated on the first ``--n`` test images at each
linf ``--eps``:

- clean accuracy;
- CE PGD: PGD-40 (one restart) with cross-entropy, the attack distillation was designed to stop;
- margin PGD: PGD-40 with the margin (CW) loss on the logits, and APGD-DLR (100 steps); the column is
  the worst case per image over both;
- standard suite: the ``standard`` suite (APGD-CE, APGD-T, FAB-T, Square 5,000), in cascade.

Part ``robust``: ``robust-distillation`` (ARD, Goldblum et al. 2020) from the Fast-AT teacher
(``<models>/mnist-fast-at``, ``train_models.py``) into a narrower small CNN (``small-cnn-narrow`` below: 8 and
16 channels, 50 hidden units, about a quarter of small-cnn's parameters; the registry offers no smaller
architecture and small-cnn has no width option, so the script registers it). Clean accuracy, PGD-40 and the
``standard`` suite at linf ``--robust-eps``, on the first ``--robust-n`` test images; parameter counts and
inference time (ms per 1,000 images, batch 250, 1 thread, the best of 5 passes).

Usage:
    ADVROBUST_DATA=<data> OMP_NUM_THREADS=1 python benchmarks/distillation_mnist.py --models <models> \\
        --work <work> --out distillation.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

import advrobust
from advrobust.attacks import APGD, PGD
from advrobust.config import TrainSettings
from advrobust.models import register_model
from advrobust.models.cnn import _conv_out, spatial_size
from advrobust.runs import train_run


@register_model("small-cnn-narrow")
def small_cnn_narrow(
    *, num_classes: int, in_channels: int, input_size: int | Sequence[int] = 28
) -> nn.Sequential:
    """small-cnn at half width: 8 and 16 channels, 50 hidden units (the robust-distillation student)."""
    h, w = spatial_size(input_size)
    for _ in range(2):
        h, w = _conv_out(h, 4, 2, 1), _conv_out(w, 4, 2, 1)
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * h * w, 50),
        nn.ReLU(),
        nn.Linear(50, num_classes),
    )


def load_avg() -> float:
    return os.getloadavg()[0]


def parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def ms_per_1000(model: nn.Module, x: torch.Tensor, repeats: int = 5) -> float:
    best = float("inf")
    with torch.no_grad():
        model(x[:250])
        for _ in range(repeats):
            tick = time.perf_counter()
            for start in range(0, x.shape[0], 250):
                model(x[start : start + 250])
            best = min(best, time.perf_counter() - tick)
    return 1000 * best * 1000 / x.shape[0]


def evaluate_defensive(model: nn.Module, test: Any, eps: float, seed: int) -> dict[str, Any]:
    threat = advrobust.ThreatModel(norm="linf", eps=eps)
    row: dict[str, Any] = {"eps": eps, "load_before": load_avg()}
    tick = time.perf_counter()
    pgd = advrobust.evaluate(model, test, [PGD(threat=threat, steps=40)], batch_size=250, seed=seed)
    margin = advrobust.evaluate(
        model,
        test,
        [PGD(threat=threat, steps=40, loss="margin"), APGD(threat=threat, loss="dlr", steps=100)],
        batch_size=250,
        seed=seed,
    )
    row["pgd_seconds"] = time.perf_counter() - tick
    tick = time.perf_counter()
    suite = advrobust.evaluate(model, test, "standard", threat=threat, batch_size=250, seed=seed)
    row["suite_seconds"] = time.perf_counter() - tick
    row.update(
        n=pgd.n,
        clean=pgd.clean.value,
        ce_pgd=pgd.robust.value,
        margin_pgd=margin.attacks[0].accuracy.value,
        margin_worst=margin.robust.value,
        standard=suite.robust.value,
        standard_attacks=[{"attack": a.name, "accuracy_after": a.accuracy.value} for a in suite.attacks],
    )
    return row


def defensive_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    test = advrobust.load_dataset("mnist", split="test").take(args.n)
    rows = []
    for t in args.temperatures:
        run_dir = args.work / f"distill-T{t:g}"
        tick = time.perf_counter()
        if not (args.skip_existing and (run_dir / "card.json").exists()):
            train_run(
                TrainSettings(
                    data="mnist",
                    model="small-cnn",
                    defense="distillation",
                    temperature=t,
                    epochs=args.epochs,
                    batch_size=128,
                    optimizer="adam",
                    lr=1e-3,
                    seed=args.seed,
                    out=str(run_dir),
                )
            )
        train_seconds = time.perf_counter() - tick
        for role, path in (("teacher", run_dir / "teacher"), ("student", run_dir)):
            model = advrobust.load_model(path, device="cpu").eval()
            for eps in args.eps:
                row = {"temperature": t, "model": role, "epochs": args.epochs, "train_seconds": train_seconds}
                row.update(evaluate_defensive(model, test, eps, args.seed))
                rows.append(row)
                print(
                    f"T {t:<4g} {role:8s} eps {eps:<4g} clean {row['clean']:6.1%}  CE PGD {row['ce_pgd']:6.1%}  "
                    f"margin PGD {row['margin_pgd']:6.1%}  margin+DLR {row['margin_worst']:6.1%}  "
                    f"standard {row['standard']:6.1%}  ({row['pgd_seconds']:.0f} + {row['suite_seconds']:.0f} s, "
                    f"load {row['load_before']:.2f})",
                    flush=True,
                )
    return rows


def robust_rows(args: argparse.Namespace) -> dict[str, Any]:
    teacher_dir = args.models / "mnist-fast-at"
    student_dir = args.work / "ard-small-cnn-narrow"
    tick = time.perf_counter()
    if not (args.skip_existing and (student_dir / "card.json").exists()):
        train_run(
            TrainSettings(
                data="mnist",
                model="small-cnn-narrow",
                defense="robust-distillation",
                teacher=str(teacher_dir),
                eps=args.robust_eps,
                epochs=args.robust_epochs,
                batch_size=128,
                optimizer="adam",
                lr=1e-3,
                schedule="cosine",
                normalize=False,  # as the Fast-AT teacher (Wong et al.'s MNIST model)
                seed=args.seed,
                out=str(student_dir),
            )
        )
    train_seconds = time.perf_counter() - tick
    test = advrobust.load_dataset("mnist", split="test").take(args.robust_n)
    x = test.images.float().div(255)
    threat = advrobust.ThreatModel(norm="linf", eps=args.robust_eps)
    out: dict[str, Any] = {
        "eps": args.robust_eps,
        "n": len(test),
        "epochs": args.robust_epochs,
        "train_seconds": train_seconds,
        "models": [],
    }
    for role, path in (
        ("teacher (Fast-AT small-cnn)", teacher_dir),
        ("student (ARD small-cnn-narrow)", student_dir),
    ):
        model = advrobust.load_model(path, device="cpu").eval()
        row: dict[str, Any] = {"model": role, "parameters": parameters(model), "load_before": load_avg()}
        row["ms_per_1000"] = ms_per_1000(model, x)
        tick = time.perf_counter()
        pgd = advrobust.evaluate(model, test, [PGD(threat=threat, steps=40)], batch_size=250, seed=args.seed)
        row["pgd_seconds"] = time.perf_counter() - tick
        tick = time.perf_counter()
        suite = advrobust.evaluate(model, test, "standard", threat=threat, batch_size=250, seed=args.seed)
        row["suite_seconds"] = time.perf_counter() - tick
        row.update(
            clean=pgd.clean.value,
            pgd40=pgd.robust.value,
            standard=suite.robust.value,
            standard_attacks=[{"attack": a.name, "accuracy_after": a.accuracy.value} for a in suite.attacks],
        )
        out["models"].append(row)
        print(
            f"{role:32s} params {row['parameters']:7d}  {row['ms_per_1000']:.1f} ms/1000  clean {row['clean']:6.1%}"
            f"  PGD-40 {row['pgd40']:6.1%}  standard {row['standard']:6.1%}  "
            f"({row['pgd_seconds']:.0f} + {row['suite_seconds']:.0f} s, load {row['load_before']:.2f})",
            flush=True,
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", type=Path, required=True, help="folder holding mnist-fast-at")
    parser.add_argument("--work", type=Path, required=True, help="folder for the distilled models")
    parser.add_argument("--out", type=Path, required=True, help="JSON results")
    parser.add_argument("--part", choices=["defensive", "robust"], action="append")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 20.0, 100.0])
    parser.add_argument("--epochs", type=int, default=3, help="teacher and student epochs each")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--eps", type=float, nargs="+", default=[0.1, 0.3])
    parser.add_argument("--robust-eps", type=float, default=0.3)
    parser.add_argument("--robust-epochs", type=int, default=5)
    parser.add_argument("--robust-n", type=int, default=1000)
    parser.add_argument("--skip-existing", action="store_true", help="reuse models already in --work")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not os.environ.get("ADVROBUST_DATA"):
        parser.error("set ADVROBUST_DATA to the folder holding mnist/ (the four IDX .gz files)")
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    parts = args.part or ["defensive", "robust"]
    print(
        f"advrobust {advrobust.__version__}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"cpu {platform.processor() or platform.machine()}, load {load_avg():.2f}",
        flush=True,
    )
    out: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {}
    out["environment"] = {
        "advrobust": advrobust.__version__,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
    }
    if "defensive" in parts:
        tick = time.perf_counter()
        out["defensive"] = {"n": args.n, "epochs": args.epochs, "rows": defensive_rows(args)}
        out["defensive"]["seconds"] = time.perf_counter() - tick
        args.out.write_text(json.dumps(out, indent=2))
    if "robust" in parts:
        tick = time.perf_counter()
        out["robust"] = robust_rows(args)
        out["robust"]["seconds"] = time.perf_counter() - tick
        args.out.write_text(json.dumps(out, indent=2))
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
