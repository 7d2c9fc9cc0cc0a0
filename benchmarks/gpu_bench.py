"""GPU benchmark (issue 8): attack throughput and a Fast-AT epoch, fp32 vs bf16 + channels_last.

Run by ``benchmarks/gpu.sh`` on a machine with a GPU (it also runs on a CPU with ``--quick``, to check it).
Every case is timed after a warm-up, with ``torch.cuda.synchronize`` around it, in one process:

1. PGD-40 linf (eps 8/255) on a CIFAR-shaped ``preact-resnet18`` with random weights and random inputs
   labelled by the model itself (every sample clean-correct, nothing skipped): advrobust fp32, advrobust
   bf16 + channels_last (``advrobust.accel``), torchattacks PGD if it is importable; images per second,
   peak GPU memory, robust accuracy.
2. One Fast-AT epoch (eps 8/255) on random CIFAR-shaped data with ``preact-resnet18``: the trainer in fp32
   vs bf16 autocast + channels_last; samples per second, peak GPU memory.
3. The CPU benchmarks' peer cases (``harness.py``: same settings, same checks of every returned example) on
   the GPU, in this process: FGSM, PGD-40 linf / l2, APGD-CE, CW-L2, Square, the ``standard`` suite against
   torchattacks, ART, foolbox and the reference AutoAttack (each where installed) on the MNIST benchmark
   models (``ADVROBUST_DATA`` and ``--models``), and FGSM / PGD-40 on the random ``preact-resnet18``; cheap
   cases first, cut by ``--budget``.
4. With ``--compile-reserve``: PGD-40 as in 1 through ``torch.compile`` (its compilation timed apart).

Writes JSON (``--out``) and prints a table.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
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


def pgd_cases(
    args: argparse.Namespace, device: torch.device, *, compiled: bool = False
) -> list[dict[str, Any]]:
    """PGD-40 rows: advrobust fp32, bf16 + channels_last and torchattacks; with ``compiled`` only the
    ``torch.compile`` variant (its own section, run last: its compilation takes a minute or more)."""
    model, x, y = resnet_inputs(args.pgd_n, device, args.seed)
    threat = advrobust.ThreatModel(norm="linf", eps=EPS)
    pgd = create_attack("pgd", threat=threat, steps=40, step_size=EPS / 4)
    runners: dict[str, Callable[[Tensor, Tensor], Tensor]] = {}
    # accelerate() converts the module it is given to channels_last: the fast variants get their own copy,
    # so the fp32 rows (and torchattacks) run the plain contiguous model.
    if compiled:
        fast = accelerate(copy.deepcopy(model), device, amp=True, channels_last=True, compile=True)
        runners["advrobust bf16+channels_last+compile"] = lambda xb, yb: pgd(
            fast, xb, yb, generator=torch.Generator(device).manual_seed(0)
        )
    else:
        runners["advrobust fp32"] = lambda xb, yb: pgd(
            model, xb, yb, generator=torch.Generator(device).manual_seed(0)
        )
        fast = accelerate(copy.deepcopy(model), device, amp=True, channels_last=True)
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

        # Warm-up: CUDA's lazy start, autocast caches, torch.compile's compilation.
        _, warm_seconds = timed(lambda run=run, bs=bs: run(x[:bs], y[:bs]), device)
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
                "warm_up_seconds": warm_seconds,
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
        # Warm-up on a copy (lazy CUDA start, kernel choices for these shapes), then the timed epoch from the same weights.
        warm = data.take(min(len(data), 3 * args.batch_size))
        train(copy.deepcopy(model), warm, objective=objective, config=config, device=device)
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


#: Peer cases on the MNIST models: (attack, libraries), the single attacks first, then the ensembles (run
#: after the ResNet rows, so that a short budget cuts the slowest cases). ART's AutoAttack (5 restarts of
#: each APGD, DeepFool, Square 5,000 x 5) takes about 30 minutes on a CPU and is left out; its CW-L2 runs on
#: the first 200 images, as on the CPU.
MNIST_CASES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("fgsm", ("advrobust", "torchattacks", "foolbox", "art")),
    ("pgd40-linf", ("advrobust", "torchattacks", "foolbox", "art")),
    ("pgd40-l2", ("advrobust", "torchattacks", "foolbox", "art")),
    ("apgd-ce", ("advrobust", "torchattacks", "art")),
    ("cw-l2", ("advrobust", "torchattacks", "foolbox")),
)
MNIST_ENSEMBLES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("square", ("advrobust", "torchattacks", "art")),
    ("autoattack", ("advrobust", "torchattacks", "reference")),
    ("autoattack-parts-100", ("torchattacks",)),
    ("cw-l2", ("art",)),  # ART's CW line search runs in numpy: the slowest single attack here
)
RESNET_CASES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("fgsm", ("advrobust", "torchattacks", "foolbox", "art")),
    ("pgd40-linf", ("advrobust", "torchattacks", "foolbox", "art")),
    ("pgd40-l2", ("advrobust", "torchattacks", "foolbox", "art")),
)


class CaseTimeoutError(BaseException):
    """A BaseException, so that a peer library's ``except Exception`` cannot swallow the alarm."""


def run_peer_case(case: dict[str, Any], limit: float) -> dict[str, Any]:
    """``harness.run_case`` in this process (a fresh process per case would pay CUDA's start each time),
    stopped by an alarm after ``limit`` seconds; a failure is recorded, not raised."""
    import signal

    import harness

    def on_alarm(signum: int, frame: Any) -> None:
        raise CaseTimeoutError(f"over {limit:.0f} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(max(1, int(limit)))
    try:
        return harness.run_case(dict(case))
    except CaseTimeoutError as exc:
        return {**case, "status": "timeout", "error": str(exc)}
    except Exception as exc:
        return {**case, "status": "error", "error": f"{type(exc).__name__}: {exc}"[-2000:]}
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def peer_cases(
    args: argparse.Namespace,
    device: torch.device,
    deadline: float,
    on_row: Callable[[dict[str, Any]], None],
) -> list[dict[str, Any]]:
    """advrobust against torchattacks, ART, foolbox and the reference AutoAttack through the CPU benchmarks'
    harness (same settings, same checks: ``benchmarks/harness.py``), on ``device``: the MNIST benchmark models
    (``--models`` and ``ADVROBUST_DATA``) and the random 32x32 preact-resnet18. A case is run twice when its
    first run takes under ``--repeat-under`` seconds, and its faster run is reported."""
    import harness

    mnist: list[dict[str, Any]] = []
    if os.environ.get("ADVROBUST_DATA") and args.models is not None:
        for name in ("mnist-standard", "mnist-fast-at"):
            if (args.models / name).is_dir():
                folder = str(args.models / name)
                mnist.append(
                    {"model": folder, "model_name": name, "n": args.mnist_n, "batch_size": args.mnist_batch}
                )
    else:
        print("MNIST peer cases skipped: set ADVROBUST_DATA and --models")
    resnet = {
        "model": harness.RESNET_MODEL,
        "model_name": "preact-resnet18 32x32 random",
        "n": args.resnet_n,
        "batch_size": args.batch_size,
    }
    plan = [(base, c) for base in mnist for c in MNIST_CASES]
    plan += [(resnet, c) for c in RESNET_CASES]
    plan += [(base, c) for base in mnist for c in MNIST_ENSEMBLES]
    rows = []
    for base, (attack, libraries) in plan:
        for library in libraries:
            case = {**base, "library": library, "attack": attack, "seed": args.seed, "device": str(device)}
            case["threads"] = os.cpu_count() or 1
            if library == "art" and attack == "cw-l2":
                case["n"] = min(int(case["n"]), 200)
            runs = []
            for _ in range(2):
                left = deadline - time.perf_counter()
                if left < 5:
                    runs.append({**case, "status": "skipped", "error": "out of the run's time budget"})
                    break
                runs.append(run_peer_case(case, min(args.case_limit, left)))
                if runs[-1].get("status") != "ok" or runs[-1]["seconds"] >= args.repeat_under:
                    break
            ok = [r for r in runs if r.get("status") == "ok"]
            row = dict(min(ok, key=lambda r: r["seconds"])) if ok else dict(runs[-1])
            row.pop("robust_flags", None)
            row["run_seconds"] = [r.get("seconds") for r in runs]
            row["case"] = f"{attack} {base['model_name']}" + (
                f" (n={case['n']})" if case["n"] != base["n"] else ""
            )
            row["variant"] = library
            rows.append(row)
            on_row(row)
            print(harness.brief(row) if ok else row, f"[{row['case']} {library}]", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--models", type=Path, help="folder of benchmarks/train_models.py runs")
    parser.add_argument("--pgd-n", type=int, default=4096)
    parser.add_argument("--train-n", type=int, default=50000)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--mnist-n", type=int, default=1000)
    parser.add_argument("--mnist-batch", type=int, default=500)
    parser.add_argument("--resnet-n", type=int, default=2048, help="random 32x32 inputs in the peer cases")
    parser.add_argument(
        "--repeat-under", type=float, default=20.0, help="seconds: peer cases under it run twice"
    )
    parser.add_argument(
        "--case-limit", type=float, default=60.0, help="seconds before a peer case is stopped"
    )
    parser.add_argument(
        "--budget", type=float, default=420.0, help="seconds for the whole run (peer cases stop)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--compile-reserve",
        type=float,
        default=0.0,
        help="seconds kept from the peer cases for a last section: PGD with torch.compile (0: no such section)",
    )
    parser.add_argument("--only", action="append", choices=["pgd", "fast-at", "peers", "compile"])
    parser.add_argument("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark on")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check the script on a CPU")
    args = parser.parse_args()
    if args.quick:
        args.pgd_n, args.train_n, args.batch_size, args.mnist_n, args.mnist_batch = 16, 64, 16, 20, 20
        args.resnet_n = 8
    device = torch.device(args.device)
    # PyTorch's default (off) unless asked: with it on, every new batch size autotunes each convolution, and
    # advrobust's attacks shrink their batches as samples are fooled (per-sample early stop).
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
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
    deadline = time.perf_counter() + args.budget
    sections: dict[str, Callable[[], list[dict[str, Any]]]] = {
        "pgd": lambda: pgd_cases(args, device),
        "fast-at": lambda: fast_at_cases(args, device),
        "peers": lambda: peer_cases(args, device, deadline - args.compile_reserve, on_row),
    }
    if args.compile_reserve > 0:
        sections["compile"] = lambda: pgd_cases(args, device, compiled=True)

    def on_row(row: dict[str, Any]) -> None:  # keep what a killed run has done
        args.out.write_text(json.dumps({**report, "rows": [*report["rows"], *partial, row]}, indent=2))
        partial.append(row)

    partial: list[dict[str, Any]] = []
    for key, fn in sections.items():
        if args.only and key not in args.only:
            continue
        partial.clear()
        try:
            report["rows"] += fn()
        except Exception as exc:  # one broken section must not cost the others' numbers
            print(f"section {key} failed: {type(exc).__name__}: {exc}", flush=True)
            report["rows"] += partial  # the rows it finished
            report.setdefault("failed_sections", {})[key] = f"{type(exc).__name__}: {exc}"
        args.out.write_text(json.dumps(report, indent=2))
    print_tables(report["rows"])


def print_tables(rows: list[dict[str, Any]]) -> None:
    print("\n| case | variant | n | seconds | per second | robust | peak MB |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        if r.get("status", "ok") != "ok":
            print(f"| {r['case']} | {r['variant']} | {r['n']} | {r['status']} | - | - | - |")
            continue
        rate = r.get("images_per_second") or r.get("samples_per_second")
        robust = r.get("robust_accuracy")
        peak = r.get("peak_mb", r.get("peak_cuda_mb"))
        print(
            f"| {r['case']} | {r['variant']} | {r['n']} | {r['seconds']:.2f} | "
            f"{'-' if rate is None else f'{rate:.0f}'} | {'-' if robust is None else f'{robust:.1%}'} | "
            f"{'-' if peak is None else f'{peak:.0f}'} |"
        )
    # advrobust over the fastest peer, per peer case (the CPU benchmarks' ratio).
    print(
        "\n| case | advrobust / fastest peer | robust advrobust / peers | peak MB advrobust / leanest peer |"
    )
    print("|---|---:|---|---|")
    cases = dict.fromkeys(r["case"] for r in rows if "peak_cuda_mb" in r or r.get("library"))
    for case in cases:
        ok = [r for r in rows if r["case"] == case and r.get("status") == "ok" and "library" in r]
        ours = [r for r in ok if r["library"] == "advrobust"]
        peers = [r for r in ok if r["library"] != "advrobust"]
        if not ours or not peers:
            continue
        best = max(peers, key=lambda r: r["images_per_second"])
        lean = min(peers, key=lambda r: r.get("peak_cuda_mb") or 0.0)
        ratio = ours[0]["images_per_second"] / best["images_per_second"]
        robust = " / ".join(f"{r['library']} {r['robust_accuracy']:.1%}" for r in ours + peers)
        memory = (
            f"{ours[0].get('peak_cuda_mb', 0):.0f} / {lean.get('peak_cuda_mb', 0):.0f} ({lean['library']})"
        )
        print(f"| {case} | {ratio:.2f} ({best['library']}) | {robust} | {memory} |")


if __name__ == "__main__":
    main()
