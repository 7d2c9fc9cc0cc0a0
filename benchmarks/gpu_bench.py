"""GPU benchmark (issue 8): attack throughput and a Fast-AT epoch, fp32 vs bf16 + channels_last.

Run by ``benchmarks/gpu.sh`` on a machine with a GPU (it also runs on a CPU with ``--quick``, to check it).
Every case is timed after a warm-up, with ``torch.cuda.synchronize`` around it, in one process:

1. PGD-40 linf (eps 8/255) on a CIFAR-shaped ``preact-resnet18`` with random weights and random inputs
   labelled by the model itself (every sample clean-correct, nothing skipped): advrobust fp32, advrobust
   bf16 + channels_last (``advrobust.accel``), torchattacks PGD if it is importable; images per second,
   peak GPU memory, robust accuracy.
2. One Fast-AT epoch (eps 8/255) on random CIFAR-shaped data with ``preact-resnet18``: the trainer in fp32
   vs bf16 autocast + channels_last; samples per second, peak GPU memory.
3. If ``ADVROBUST_DATA`` holds MNIST and ``--models`` the benchmark models: the ``standard`` suite on the
   first ``--mnist-n`` test images of each, and torchattacks' AutoAttack members with the reference's 100
   steps, if torchattacks is importable, and the reference AutoAttack (``pyautoattack``) if it is.

Writes JSON (``--out``) and prints a table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import advrobust
from advrobust.accel import accelerate
from advrobust.attacks import create_attack
from advrobust.data import ImageDataset
from advrobust.training import TrainConfig, create_objective, train

EPS = 8 / 255


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_mb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    sync(device)
    tick = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - tick


def resnet_inputs(n: int, device: torch.device, seed: int) -> tuple[nn.Module, Tensor, Tensor]:
    torch.manual_seed(seed)
    model = advrobust.create_model("preact-resnet18", num_classes=10, in_channels=3).to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed)).to(device)
    with torch.no_grad():
        y = torch.cat([model(x[i : i + 256]).argmax(1) for i in range(0, n, 256)])
    return model, x, y


def pgd_cases(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    model, x, y = resnet_inputs(args.pgd_n, device, args.seed)
    threat = advrobust.ThreatModel(norm="linf", eps=EPS)
    pgd = create_attack("pgd", threat=threat, steps=40, step_size=EPS / 4)
    runners: dict[str, Callable[[Tensor, Tensor], Tensor]] = {}
    runners["advrobust fp32"] = lambda xb, yb: pgd(
        model, xb, yb, generator=torch.Generator(device).manual_seed(0)
    )
    fast = accelerate(model, device, amp=True, channels_last=True)
    runners["advrobust bf16+channels_last"] = lambda xb, yb: pgd(
        fast, xb, yb, generator=torch.Generator(device).manual_seed(0)
    )
    try:
        import torchattacks

        ta = torchattacks.PGD(model, eps=EPS, alpha=EPS / 4, steps=40, random_start=True)
        runners["torchattacks fp32"] = lambda xb, yb: ta(xb, yb)
    except Exception as exc:  # not installed on the GPU machine
        print(f"torchattacks not available: {type(exc).__name__}: {exc}")
    rows = []
    for name, run in runners.items():
        bs = args.batch_size

        def all_batches(run: Callable[[Tensor, Tensor], Tensor] = run, bs: int = bs) -> Tensor:
            return torch.cat([run(x[i : i + bs], y[i : i + bs]) for i in range(0, len(x), bs)])

        run(x[:bs], y[:bs])  # warm-up (cuDNN autotuning, autocast caches)
        peak_reset(device)
        x_adv, seconds = timed(all_batches, device)
        with torch.no_grad():
            robust = float((model(x_adv).argmax(1) == y).float().mean())
        worst = float((x_adv - x).abs().amax())
        rows.append(
            {
                "case": "pgd40-linf preact-resnet18 32x32",
                "variant": name,
                "n": len(x),
                "batch_size": bs,
                "seconds": seconds,
                "images_per_second": len(x) / seconds,
                "robust_accuracy": robust,
                "max_linf": worst,
                "peak_mb": peak_mb(device),
            }
        )
        print(rows[-1], flush=True)
    return rows


def fast_at_cases(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    generator = torch.Generator().manual_seed(args.seed)
    images = torch.randint(0, 256, (args.train_n, 3, 32, 32), generator=generator, dtype=torch.uint8)
    labels = torch.randint(0, 10, (args.train_n,), generator=generator)
    data = ImageDataset(images, labels, 10, "random-cifar-shaped", tuple(str(i) for i in range(10)))
    threat = advrobust.ThreatModel(norm="linf", eps=EPS)
    rows = []
    for name, fast in (("fp32", False), ("bf16+channels_last", True)):
        torch.manual_seed(args.seed)
        model = advrobust.create_model("preact-resnet18", num_classes=10, in_channels=3)
        objective = create_objective("fast-at", threat=threat, guard=False)
        config = TrainConfig(
            epochs=1, batch_size=args.batch_size, optimizer="sgd", lr=0.1, amp=fast, channels_last=fast,
            robust_val=0,
        )  # fmt: skip
        peak_reset(device)
        result, seconds = timed(
            lambda model=model, config=config, objective=objective: train(
                model, data, objective=objective, config=config, device=device
            ),
            device,
        )
        rows.append(
            {
                "case": "fast-at epoch preact-resnet18 32x32",
                "variant": name,
                "n": args.train_n,
                "batch_size": args.batch_size,
                "seconds": seconds,
                "samples_per_second": args.train_n / seconds,
                "peak_mb": peak_mb(device),
                "final_loss": result.history[-1].get("loss") if result.history else None,
            }
        )
        print(rows[-1], flush=True)
    return rows


def suite_row(
    rows: list[dict[str, Any]], model: str, variant: str, n: int, seconds: float, robust: float, **extra: Any
) -> None:
    """Append (and print) one timed run of a standard-suite recipe on the MNIST model ``model``."""
    rows.append(
        {
            "case": f"standard suite {model}",
            "variant": variant,
            "n": n,
            "seconds": seconds,
            "robust_accuracy": robust,
            **extra,
        }
    )
    print(rows[-1], flush=True)


def mnist_cases(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    if not os.environ.get("ADVROBUST_DATA") or args.models is None:
        print("MNIST suite skipped: set ADVROBUST_DATA and --models")
        return []
    from advrobust.evaluation.suites import build_suite

    rows = []
    test = advrobust.load_dataset("mnist", split="test").take(args.mnist_n)
    x, y = test.images.float().div(255).to(device), test.labels.to(device)
    threat = advrobust.ThreatModel(norm="linf", eps=0.3)
    for name in ("mnist-standard", "mnist-fast-at"):
        folder = args.models / name
        if not folder.is_dir():
            continue
        model = advrobust.load_model(folder, device=device).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        result, seconds = timed(
            lambda model=model: advrobust.evaluate(
                model, (x, y), build_suite("standard", threat), batch_size=args.mnist_batch, seed=0
            ),
            device,
        )
        per_attack = [[a.name, a.attacked, a.fooled, a.seconds] for a in result.attacks]
        suite_row(rows, name, "advrobust", len(y), seconds, result.robust.value, per_attack=per_attack)
        try:
            from pyautoattack import AutoAttack
        except Exception as exc:  # the reference is optional here, as torchattacks
            print(f"pyautoattack not available: {type(exc).__name__}: {exc}")
        else:
            logging.getLogger("auto-attack").setLevel(logging.WARNING)
            reference = AutoAttack(model, norm="Linf", eps=0.3, version="standard", seed=0, device=device)

            def run_reference(reference: Any = reference, model: nn.Module = model) -> Tensor:
                x_adv, _ = reference.run_standard_evaluation(x, y, batch_size=args.mnist_batch)
                with torch.no_grad():
                    return model(x_adv).argmax(1) == y

            robust, seconds = timed(run_reference, device)
            variant = "reference AutoAttack (pyautoattack), standard"
            suite_row(rows, name, variant, len(y), seconds, float(robust.float().mean()))
        try:
            import torchattacks as ta
        except Exception:
            continue
        common = {"norm": "Linf", "eps": 0.3, "seed": 0, "n_restarts": 1, "steps": 100}
        parts = [
            ta.APGD(model, loss="ce", **common),
            ta.APGDT(model, n_classes=10, **common),
            ta.FAB(model, multi_targeted=True, n_classes=10, **common),
            ta.Square(model, norm="Linf", eps=0.3, seed=0, n_queries=5000, n_restarts=1),
        ]

        def cascade(model: nn.Module = model, parts: list[Any] = parts) -> Tensor:
            robust = torch.ones(len(y), dtype=torch.bool, device=device)
            for start in range(0, len(y), args.mnist_batch):
                xb, yb = x[start : start + args.mnist_batch], y[start : start + args.mnist_batch]
                with torch.no_grad():
                    standing = (model(xb).argmax(1) == yb).nonzero().squeeze(1)
                for atk in parts:
                    if standing.numel() == 0:
                        break
                    adv = atk(xb[standing], yb[standing])
                    with torch.no_grad():
                        fooled = model(adv).argmax(1) != yb[standing]
                    standing = standing[~fooled]
                keep = torch.zeros(len(yb), dtype=torch.bool, device=device)
                keep[standing] = True
                robust[start : start + len(yb)] = keep
            return robust

        robust, seconds = timed(cascade, device)
        variant = "torchattacks members, 100 steps"
        suite_row(rows, name, variant, len(y), seconds, float(robust.float().mean()))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--models", type=Path, help="folder of benchmarks/train_models.py runs")
    parser.add_argument("--pgd-n", type=int, default=4096)
    parser.add_argument("--train-n", type=int, default=20000)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--mnist-n", type=int, default=1000)
    parser.add_argument("--mnist-batch", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", action="append", choices=["pgd", "fast-at", "mnist"])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check the script on a CPU")
    args = parser.parse_args()
    if args.quick:
        args.pgd_n, args.train_n, args.batch_size, args.mnist_n, args.mnist_batch = 16, 64, 16, 20, 20
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    report: dict[str, Any] = {
        "script": "benchmarks/gpu_bench.py",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "torch": torch.__version__,
        "advrobust": advrobust.__version__,
        "args": {k: str(v) for k, v in vars(args).items()},
        "rows": [],
    }
    print(report["device"], report["torch"], flush=True)
    sections = {"pgd": pgd_cases, "fast-at": fast_at_cases, "mnist": mnist_cases}
    for key, fn in sections.items():
        if args.only and key not in args.only:
            continue
        report["rows"] += fn(args, device)
        args.out.write_text(json.dumps(report, indent=2))
    print("\n| case | variant | n | seconds | per second | robust | peak MB |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in report["rows"]:
        rate = r.get("images_per_second") or r.get("samples_per_second")
        robust = r.get("robust_accuracy")
        peak = r.get("peak_mb")
        print(
            f"| {r['case']} | {r['variant']} | {r['n']} | {r['seconds']:.2f} | "
            f"{'-' if rate is None else f'{rate:.0f}'} | {'-' if robust is None else f'{robust:.1%}'} | "
            f"{'-' if peak is None else f'{peak:.0f}'} |"
        )


if __name__ == "__main__":
    main()
