"""The ``advrobust`` command: parse, build validated settings, call the library, print."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from advrobust import __version__, distributed
from advrobust.allocator import tune_malloc
from advrobust.errors import AdvrobustError

#: Console width when the output is not a terminal.
LOG_WIDTH = 160

EPILOG_TRAIN = """examples:
  advrobust train --data mnist-mini --model small-cnn --epochs 5 --out runs/mnist-std
  # Fast-AT with the MNIST recipe of Wong et al. 2020 (cyclic learning rate up to 5e-3):
  advrobust train --data mnist --model small-cnn --defense fast-at --norm linf --eps 0.3 --epochs 10 --lr 5e-3 --schedule cyclic
  advrobust train --defense trades --eps 0.3 --beta 6 --steps 10 --robust-val 500 --ema-decay 0.999
  # Defensive distillation: trains the teacher at T into runs/distilled/teacher, then the student into runs/distilled
  advrobust train --defense distillation --temperature 100 --out runs/distilled
  advrobust train --model small-cnn --defense robust-distillation --teacher runs/robust-teacher --eps 0.3
  advrobust train --config train.yaml --epochs 10      # flags override the YAML file
"""
EPILOG_EVAL = """examples:
  advrobust eval --model runs/mnist-std --data mnist-mini --norm linf --eps 0.1 0.3 --attack fgsm pgd
  advrobust eval --model runs/mnist-std --data mnist --root ../data --attack pgd --steps 40 --json out.json
  # models from outside advrobust: your code, timm, exported files, HTTP endpoints (black box)
  advrobust eval --model my_pkg.nets:build_model --weights net.safetensors --mean 0.1307 --std 0.3081
  advrobust eval --model model.onnx --eps 0.1                  # white-box if the conversion matches onnxruntime
  advrobust eval --model model.onnx --access score --queries 1000    # Square through onnxruntime
  advrobust eval --model http://127.0.0.1:8000 --queries 1000 --query-log queries.jsonl
"""


def _batch_size(value: str) -> int | str:
    """``--batch-size``: a positive integer or ``auto``."""
    if value == "auto":
        return value
    try:
        size = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or auto, got {value!r}") from None
    if size < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or auto, got {value!r}")
    return size


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="advrobust",
        description="Measure and improve the adversarial robustness of PyTorch image classifiers.",
        epilog="Start with `advrobust demo`; then `advrobust COMMAND --help`.",
    )
    parser.add_argument("--version", action="version", version=f"advrobust {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="train small CNNs on the bundled MNIST subset, attack them and compare defenses (two to four "
        "minutes on 2 CPU cores)",
        description="Train small-cnn on mnist-mini (shipped with advrobust), attack it with FGSM and PGD-40 at "
        "linf eps 0.1, 0.2 and 0.3 and print clean vs robust accuracy; then train a Fast-AT model, wrap the "
        "normal one in JPEG + bit-depth reduction and distill it, compare the four at linf eps 0.1 under "
        "PGD-40 and the adaptive suite (BPDA/EOT where the defense needs them), and write an HTML report.",
    )
    demo.add_argument(
        "--out", default="advrobust-demo", help="folder for the model and results (default: %(default)s)"
    )
    demo.add_argument("--epochs", type=int, default=5, help="training epochs (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")

    train = sub.add_parser(
        "train",
        help="train a model and save it as a run directory",
        description="Train an architecture on a data set and save model.safetensors + card.json in --out.",
        epilog=EPILOG_TRAIN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _data_options(train)
    train.add_argument(
        "--model", help="architecture name, e.g. small-cnn, madry-cnn, preact-resnet18 (default: small-cnn)"
    )
    train.add_argument(
        "--defense",
        help="training objective: standard, pgd-at, fast-at, trades, mart, free-at, gaussian-augment, "
        "temperature-ce, distillation or robust-distillation (default: standard)",
    )
    train.add_argument("--epochs", type=int, help="number of epochs (default: 5)")
    train.add_argument("--batch-size", type=int, help="batch size (default: 128)")
    train.add_argument("--optimizer", choices=["sgd", "adam"], help="optimizer (default: adam)")
    train.add_argument("--lr", type=float, help="learning rate (default: 1e-3)")
    train.add_argument("--momentum", type=float, help="SGD momentum (default: 0.9)")
    train.add_argument("--weight-decay", type=float, help="weight decay (default: 0)")
    train.add_argument(
        "--schedule",
        choices=["constant", "cosine", "onecycle", "cyclic"],
        help="lr schedule; cyclic: 0 -> lr -> 0, Fast-AT's (default: constant)",
    )
    train.add_argument(
        "--normalize",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="put the data's per-channel mean/std normalization inside the model (default: on)",
    )
    train.add_argument("--seed", type=int, help="random seed for initialisation and shuffling (default: 0)")
    train.add_argument("--out", help="run directory to write (default: runs/model)")
    train.add_argument(
        "--resume", action="store_true", default=None, help="continue from --out/checkpoint.pt"
    )
    train.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    adv = train.add_argument_group(
        "adversarial defenses (each takes the options it has; defaults from its paper)"
    )
    adv.add_argument("--norm", choices=["linf", "l2", "l1"], help="threat model norm (default: linf)")
    adv.add_argument("--eps", type=float, help="perturbation budget (default: 0.3)")
    adv.add_argument(
        "--steps", type=int, help="attack steps: pgd-at 7, trades 10, mart 10 (fast-at: 1, free-at: replays)"
    )
    adv.add_argument(
        "--step-size",
        type=float,
        help="attack step: pgd-at 2.5*eps/steps, fast-at 1.25*eps (0.5*eps with --prior-start), trades/mart eps/4, "
        "free-at eps",
    )
    adv.add_argument("--beta", type=float, help="weight of the robust term: trades, mart (default: 6)")
    adv.add_argument(
        "--replays",
        type=int,
        help="free-at: optimizer steps per batch (default: 8); an epoch costs that many passes",
    )
    adv.add_argument(
        "--clean-weight", type=float, help="pgd-at: weight of the clean loss in [0, 1] (default: 0)"
    )
    adv.add_argument(
        "--attack-mode",
        choices=["eval", "train"],
        help="model mode while crafting training attacks; eval leaves batch-norm statistics alone (default: eval)",
    )
    adv.add_argument(
        "--guard",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="fast-at: stop and restore the last good weights on catastrophic overfitting (default: on)",
    )
    adv.add_argument(
        "--guard-patience",
        type=int,
        help="fast-at: further checks a robust-accuracy drop must persist before the guard stops (default: 1)",
    )
    adv.add_argument(
        "--prior-start",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="fast-at: start each sample's step from its perturbation of the previous epoch, step 0.5*eps "
        "(default: off, the uniform start)",
    )
    adv.add_argument(
        "--prior-reg",
        type=float,
        help="fast-at: weight of the prior-guided regularizer, the squared logit difference between the "
        "adversarial point and the start (Jia et al. 2022; default: 0, off)",
    )
    adv.add_argument(
        "--sigma",
        type=float,
        help="gaussian-augment: noise level, the sigma you will certify with (default: 0.25)",
    )
    adv.add_argument(
        "--temperature",
        type=float,
        help="distillation: softmax temperature T of teacher and student (default: 100); robust-distillation: 30",
    )
    adv.add_argument(
        "--teacher",
        metavar="RUN_DIR",
        help="distillation, robust-distillation: the teacher's run directory; without it, distillation first "
        "trains --model at T into --out/teacher",
    )
    adv.add_argument(
        "--alpha",
        type=float,
        help="distillation, robust-distillation: weight of the soft-label term in [0, 1], the rest on hard-label "
        "cross-entropy (default: 1)",
    )
    adv.add_argument(
        "--ema-decay", type=float, help="keep and save an EMA of the weights, e.g. 0.999 (default: off)"
    )
    adv.add_argument(
        "--eps-warmup",
        type=float,
        metavar="EPOCHS",
        help="ramp the training eps linearly from 0 over this many epochs (default: 0, off); pure pgd-at "
        "of a small model from scratch may need it",
    )
    adv.add_argument(
        "--robust-val",
        type=int,
        help="training images held out for robust validation each epoch; the most robust epoch is saved "
        "(default: 500 for adversarial defenses, at most a tenth of the data; 0: off)",
    )
    adv.add_argument(
        "--robust-val-attack",
        choices=("apgd", "pgd"),
        help="the attack of robust validation (default: apgd, APGD with cross-entropy, which gradient "
        "masking fools less than fixed-step pgd)",
    )
    adv.add_argument("--robust-val-steps", type=int, metavar="N", help="its iterations (default: 20)")

    ev = sub.add_parser(
        "eval",
        help="attack a saved model and report clean and robust accuracy",
        description="Evaluate a run directory under a threat model: robust accuracy is the worst case over "
        "the attacks, per sample, with 95% confidence intervals.",
        epilog=EPILOG_EVAL,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _data_options(ev)
    ev.add_argument(
        "--model",
        help="run directory written by `advrobust train`, pkg.module:factory, timm:NAME, a .onnx or .pt2 file, "
        "or an http(s):// endpoint (required)",
    )
    ev.add_argument("--split", choices=["train", "test"], help="data split (default: test)")
    ev.add_argument(
        "--n",
        "--samples",
        dest="n",
        type=int,
        help="evaluate the first N samples only (--samples under torchrun)",
    )
    ev.add_argument("--norm", choices=["linf", "l2", "l1"], help="threat model norm (default: linf)")
    ev.add_argument("--eps", type=float, nargs="+", help="one or more budgets (default: 0.3)")
    ev.add_argument("--attack", nargs="+", help="attacks to run, e.g. fgsm pgd (default: pgd)")
    ev.add_argument(
        "--suite",
        choices=["quick", "standard", "adaptive"],
        help="a fixed recipe instead of --attack: quick (APGD-CE), standard (AutoAttack: APGD-CE, APGD-T, FAB-T, "
        "Square) or adaptive (for defended models: the standard attacks with BPDA and/or EOT, as the model needs)",
    )
    ev.add_argument(
        "--curve", action="store_true", default=None, help="also compute accuracy vs eps up to max(--eps)"
    )
    ev.add_argument("--curve-points", type=int, help="eps grid points of the curve (default: 13)")
    ev.add_argument("--steps", type=int, help="iterations of iterative attacks (PGD default: 40)")
    ev.add_argument("--step-size", type=float, help="step size (PGD default: 2.5 * eps / steps)")
    ev.add_argument("--restarts", type=int, help="random restarts (default: 1)")
    ev.add_argument(
        "--loss",
        choices=["ce", "margin", "dlr"],
        help="attack loss: cross-entropy, CW margin or DLR (default: ce)",
    )
    ev.add_argument(
        "--queries",
        type=int,
        help="query budget per sample of black-box attacks (Square 5000, HopSkipJump 1000)",
    )
    ev.add_argument(
        "--batch-size",
        type=_batch_size,
        help="batch size, or auto: large on CUDA, halved on out-of-memory (default: 256)",
    )
    ev.add_argument(
        "--amp",
        action="store_true",
        default=None,
        help="model forwards in bf16 autocast (attack maths stays float32; for GPUs): faster, but bf16 "
        "gradients can miss adversarial examples, so report robust accuracy from a float32 run",
    )
    ev.add_argument(
        "--channels-last", action="store_true", default=None, help="channels_last memory format (for GPUs)"
    )
    ev.add_argument(
        "--compile",
        action="store_true",
        default=None,
        help="torch.compile the model (the first batches pay the compilation)",
    )
    ev.add_argument(
        "--cascade",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="attack only samples that earlier attacks did not break (default: on)",
    )
    ev.add_argument("--seed", type=int, help="random seed (default: 0)")
    ev.add_argument("--json", metavar="PATH", help="write results as JSON to PATH")
    ev.add_argument(
        "--state",
        metavar="PATH",
        help="save finished batches to PATH as they complete; rerunning the same command resumes after them",
    )
    ev.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    _model_source_options(ev)
    au = sub.add_parser(
        "audit",
        help="check a saved model for gradient masking (exit status 1 when a check fails)",
        description="Run the sanity checks of Carlini et al. (2019) and AutoAttack: iterative beats single-step, "
        "more steps do not help, accuracy reaches 0 at an unbounded budget, white-box beats Square and noise, "
        "gradients are non-zero, outputs are logits, the model is deterministic.",
    )
    _data_options(au)
    au.add_argument(
        "--model",
        help="run directory written by `advrobust train`, pkg.module:factory, timm:NAME or a .onnx/.pt2 file "
        "(required)",
    )
    au.add_argument("--split", choices=["train", "test"], help="data split (default: test)")
    au.add_argument("--n", "--samples", dest="n", type=int, help="samples to audit (default: 200)")
    au.add_argument("--norm", choices=["linf", "l2", "l1"], help="threat model norm (default: linf)")
    au.add_argument("--eps", type=float, help="budget (default: 0.3)")
    au.add_argument("--steps", type=int, help="PGD steps of the base attack (default: 40)")
    au.add_argument("--square-queries", type=int, help="query budget of the Square check (default: 1000)")
    au.add_argument("--batch-size", type=int, help="batch size (default: 256)")
    au.add_argument("--seed", type=int, help="random seed (default: 0)")
    au.add_argument("--json", metavar="PATH", help="write the audit as JSON to PATH")
    au.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    au.add_argument("--quiet", action="store_true", help="no spinner")
    _model_source_options(au)
    _serve_parser(sub)
    _defense_parsers(sub)
    _report_parser(sub)
    return parser


EPILOG_DEFEND = """examples:
  advrobust defend --model runs/mnist-std --transform jpeg:75 --transform bitdepth:4 --out runs/mnist-jpeg
  advrobust eval --model runs/mnist-jpeg --eps 0.1 --suite adaptive    # BPDA: the honest number
transforms: jpeg:QUALITY, bitdepth:BITS, blur:SIGMA, median:KERNEL_SIZE, noise:SIGMA, resize-pad:MIN_SCALE,
  tv:WEIGHT
  (or name:key=value,key=value, e.g. blur:sigma=1.0,kernel_size=5)
"""
EPILOG_CERTIFY = """examples:
  advrobust train --defense gaussian-augment --epochs 10 --out runs/mnist-noise
  advrobust certify --model runs/mnist-noise --sigma 0.25 --n 1000 --n0 100 --alpha 0.001 --json out.json
"""


def _defense_parsers(sub: Any) -> None:
    defend = sub.add_parser(
        "defend",
        help="wrap a saved model in input transformations (JPEG, bit depth, ...) and save the defended model",
        description="Save a run directory whose model applies the transforms before the saved model; "
        "load_model and every command rebuild the wrapper. Evaluate it with --suite adaptive: these defenses "
        "mostly break gradients (Athalye et al., 2018) and only BPDA / EOT measure them honestly.",
        epilog=EPILOG_DEFEND,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    defend.add_argument("--config", metavar="YAML", help="read options from a YAML file (flags override it)")
    defend.add_argument("--model", help="run directory of the model to defend (required)")
    defend.add_argument(
        "--transform", action="append", help="a transform spec, repeatable, applied in order (required)"
    )
    defend.add_argument("--out", help="run directory to write (required)")

    cert = sub.add_parser(
        "certify",
        help="certified l2 radii under randomized smoothing (Cohen et al., 2019)",
        description="Certify test images with the Gaussian-smoothed version of a saved model: n0 noisy draws "
        "pick the class, n draws bound its probability (Clopper-Pearson, level alpha), radius "
        "sigma * Phi^-1(pA). Reports certified accuracy at l2 radii.",
        epilog=EPILOG_CERTIFY,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _data_options(cert)
    cert.add_argument("--model", help="run directory written by `advrobust train` (required)")
    cert.add_argument("--split", choices=["train", "test"], help="data split (default: test)")
    cert.add_argument("--images", type=int, help="certify the first N images (default: 100)")
    cert.add_argument(
        "--sigma",
        type=float,
        help="noise level (default: the one the model was trained with, gaussian-augment)",
    )
    cert.add_argument("--n0", type=int, help="draws that pick the class (default: 100)")
    cert.add_argument("--n", type=int, help="draws that bound its probability (default: 100000)")
    cert.add_argument("--alpha", type=float, help="failure probability of each certificate (default: 0.001)")
    cert.add_argument(
        "--radii", type=float, nargs="+", help="l2 radii of the certified accuracy (default: 0 0.25 0.5 1)"
    )
    cert.add_argument("--batch-size", type=int, help="noisy images per forward pass (default: 1000)")
    cert.add_argument("--seed", type=int, help="random seed of the noise (default: 0)")
    cert.add_argument("--json", metavar="PATH", help="write the certificates as JSON to PATH")
    cert.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    cert.add_argument("--quiet", action="store_true", help="no progress bar")


def _model_source_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("models from outside advrobust (--model other than a run directory)")
    group.add_argument(
        "--weights", metavar="FILE", help="safetensors weights for pkg.module:factory or timm:NAME"
    )
    group.add_argument(
        "--mean", type=float, nargs="+", help="per-channel mean the model expects (with --std)"
    )
    group.add_argument("--std", type=float, nargs="+", help="per-channel std the model expects (with --mean)")
    group.add_argument(
        "--input-shape", type=int, nargs=3, metavar=("C", "H", "W"), help="input shape (default: the data's)"
    )
    group.add_argument("--num-classes", type=int, help="number of classes (default: read from the model)")
    group.add_argument(
        "--access",
        choices=["white-box", "score", "decision"],
        help="what the attacks may use: gradients, output scores (Square) or labels only (HopSkipJump) "
        "(default: the most the model allows)",
    )
    group.add_argument(
        "--trust-pickle",
        metavar="SHA256",
        help="load a .pt2 or pickled .pt model file whose loading could run code, if its SHA-256 is this "
        "digest (as its source publishes it): only files you trust",
    )
    group.add_argument(
        "--query-log", metavar="PATH", help="remote: log answers to PATH (JSONL); reruns resume"
    )
    group.add_argument("--timeout", type=float, help="remote: seconds to wait for an answer (default: 30)")
    group.add_argument("--retries", type=int, help="remote: retries of a failed request (default: 3)")
    group.add_argument("--rate-limit", type=float, help="remote: at most this many requests per second")


EPILOG_SERVE = """examples:
  advrobust serve runs/mnist-std --port 8000 --mode labels
  advrobust eval --model http://127.0.0.1:8000 --data mnist-mini --eps 0.3 --queries 1000
"""


def _serve_parser(sub: Any) -> None:
    serve = sub.add_parser(
        "serve",
        help="serve a local model over HTTP as a black box (scores or labels), to attack it end to end",
        description="Answer GET /info and POST /predict (JSON or safetensors) with the model's scores or only "
        "its labels. Prints the URL, then serves until interrupted.",
        epilog=EPILOG_SERVE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("model", metavar="RUN_DIR", help="run directory (or pkg.module:factory, .onnx, .pt2)")
    serve.add_argument(
        "--mode", choices=["scores", "labels"], default="scores", help="(default: %(default)s)"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    serve.add_argument(
        "--port", type=int, default=8000, help="port; 0 picks a free one (default: %(default)s)"
    )
    serve.add_argument(
        "--max-batch", type=int, default=1024, help="images per request (default: %(default)s)"
    )
    serve.add_argument("--weights", metavar="FILE", help="safetensors weights for pkg.module:factory")
    serve.add_argument(
        "--mean", type=float, nargs="+", help="per-channel mean the model expects (with --std)"
    )
    serve.add_argument("--std", type=float, nargs="+", help="per-channel std the model expects (with --mean)")
    serve.add_argument("--input-shape", type=int, nargs=3, metavar=("C", "H", "W"), help="input shape")
    serve.add_argument(
        "--trust-pickle",
        metavar="SHA256",
        help="load a .pt2 or pickled .pt file whose loading could run code, if its SHA-256 is this digest",
    )


def _cmd_serve(args: argparse.Namespace, console: Console) -> int:
    from advrobust.serve import open_server

    server = open_server(
        args.model,
        mode=args.mode,
        host=args.host,
        port=args.port,
        max_batch=args.max_batch,
        weights=args.weights,
        mean=args.mean,
        std=args.std,
        input_shape=args.input_shape,
        trust_pickle=args.trust_pickle,
    )
    console.print(
        f"serving {args.model} ({args.mode}) at {server.url}", markup=False, highlight=False, soft_wrap=True
    )
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="YAML", help="read options from a YAML file (flags override it)")
    parser.add_argument(
        "--data", help="mnist-mini (bundled), mnist, fashion-mnist, cifar10, or a .npz / image folder"
    )
    parser.add_argument(
        "--root", help="folder holding the data files (default: $ADVROBUST_DATA or ~/.cache/advrobust)"
    )
    parser.add_argument(
        "--download", action="store_true", default=None, help="download missing files (checksum-verified)"
    )
    parser.add_argument("--mirror", help="base URL to download from instead of the default mirror")


def _overrides(args: argparse.Namespace, skip: Sequence[str]) -> dict[str, Any]:
    values = {k: v for k, v in vars(args).items() if k not in skip and v is not None}
    if "json" in values:
        values["json_path"] = values.pop("json")
    return values


@contextmanager
def _progress(console: Console, quiet: bool, description: str) -> Iterator[Callable[[int, int], None]]:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    # Under torchrun only rank 0 draws progress.
    hidden = quiet or os.environ.get("RANK", "0") != "0"
    with Progress(*columns, console=console, transient=True, disable=hidden) as bar:
        task = bar.add_task(description, total=None, info="")

        def update(done: int, total: int, info: str = "") -> None:
            bar.update(task, completed=done, total=total if total > 0 else None, info=info)

        yield update


def _train_progress(update: Callable[..., None]) -> Callable[[Any], None]:
    def on_step(step: Any) -> None:
        acc = f"acc {100 * step.accuracy:.1f}%"
        if step.robust_accuracy is not None:
            clean = "-" if step.clean_accuracy is None else f"{100 * step.clean_accuracy:.1f}%"
            acc = f"clean {clean} robust {100 * step.robust_accuracy:.1f}%"
        info = f"epoch {step.epoch}/{step.epochs} loss {step.loss:.3f} {acc} {step.samples_per_second:,.0f} img/s"
        update((step.epoch - 1) * step.steps + step.step, step.epochs * step.steps, info)

    return on_step


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _cmd_demo(args: argparse.Namespace, console: Console) -> int:
    from advrobust.demo import run_demo

    console.print(f"advrobust {__version__} demo: small-cnn on mnist-mini (bundled real MNIST subset)")
    with (
        _progress(console, args.quiet, "train") as train_bar,
        _progress(console, args.quiet, "attack") as eval_bar,
    ):
        outcome = run_demo(
            args.out,
            epochs=args.epochs,
            seed=args.seed,
            train_progress=_train_progress(train_bar),
            eval_progress=eval_bar,
        )
    trained = outcome.trained
    clean = trained.card.metrics.get("clean_accuracy", float("nan"))
    console.print(
        f"trained {trained.card.arch} on {trained.card.training['samples']} images, "
        f"{len(trained.result.history)} epochs, {trained.result.seconds:.1f} s"
    )
    console.print(f"clean test accuracy: {_pct(clean)}")
    table = Table(
        title="Robust accuracy under linf attacks (1,000 test images, 95% CI)",
        caption="upper bounds from two attacks; the full test: eval --suite standard",
    )
    table.add_column("eps", justify="right")
    table.add_column("clean", justify="right")
    for attack in outcome.results[0].attacks:
        table.add_column(
            attack.name.upper() + (f"-{attack.params['steps']}" if "steps" in attack.params else ""),
            justify="right",
        )
    table.add_column("worst of both", justify="right")
    table.add_column("attack time", justify="right")
    for result in outcome.results:
        low, high = result.robust.interval
        table.add_row(
            f"{result.threat['eps']:g}",
            _pct(result.clean.value),
            *(_pct(a.accuracy.value) for a in result.attacks),
            f"{_pct(result.robust.value)} [{100 * low:.1f}, {100 * high:.1f}]",
            f"{sum(a.seconds for a in result.attacks):.1f} s",
        )
    console.print(table)
    if outcome.defenses:
        from advrobust.demo import DEFENSE_EPS, DEFENSE_SAMPLES

        defenses = Table(title=f"Defenses at linf eps {DEFENSE_EPS:g} ({DEFENSE_SAMPLES} test images)")
        for column in ("model", "defense", "clean", "naive PGD", "adaptive", "train time"):
            defenses.add_column(column, justify="left" if column in ("model", "defense") else "right")
        for row in outcome.defenses:
            defenses.add_row(
                row.name,
                row.description,
                _pct(row.result.clean.value),
                _pct(row.naive),
                _pct(row.adaptive),
                f"{row.train_seconds:.0f} s",
            )
        console.print(defenses)
        console.print("naive PGD: plain PGD-40, what a careless evaluation would report.")
        console.print("adaptive: worst case of PGD-40 and the adaptive suite (APGD-CE, APGD-T, FAB-T,")
        console.print("Square; BPDA through non-differentiable transforms): the number to trust.")
        for row in outcome.defenses:
            if row.margin is not None:
                console.print(
                    f"{row.name}: PGD-40 with cross-entropy {_pct(row.naive)}, with the margin loss "
                    f"{_pct(row.margin)}:"
                )
                console.print(
                    "its saturated softmax hides the gradient from cross-entropy, not from margins."
                )
    console.print(f"models: {outcome.out}   results: {outcome.results_path}")
    console.print(f"total time: {outcome.seconds:.0f} s")
    if outcome.report_path is not None:
        console.print(f"report: {outcome.report_path}", markup=False, highlight=False, soft_wrap=True)
    return 0


def _objective_label(card: Any) -> str:
    """``temperature-ce temperature=100``: the objective a card records, with its scalar options."""
    objective = card.training.get("objective", {})
    options = " ".join(f"{k}={v:g}" for k, v in objective.items() if isinstance(v, (int, float)))
    return f"{objective.get('name', '?')} {options}".strip()


def _cmd_train(args: argparse.Namespace, console: Console) -> int:
    from advrobust.config import TrainSettings, build_settings, read_yaml
    from advrobust.runs import train_run
    from advrobust.training.validation import validation_label

    config = read_yaml(args.config) if args.config else {}
    settings = build_settings(TrainSettings, config, _overrides(args, ("command", "config", "quiet")))
    with _progress(console, args.quiet, "train") as bar:
        outcome = train_run(settings, progress=_train_progress(bar))
    if not distributed.info().is_main:
        return 0  # rank 0 prints for the whole group
    if outcome.teacher is not None:
        console.print(
            f"trained the teacher ({_objective_label(outcome.teacher.card)}) and saved it to {outcome.teacher.path}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    result = outcome.result
    table = Table(title=f"{settings.model} on {outcome.card.dataset} ({settings.defense})")
    # Adversarial defenses: train acc is on the training attack's points, holdout robust under the
    # validation attack (APGD-CE-20 by default).
    adversarial = any("train_robust_accuracy" in h for h in result.history)
    train_columns = ("train robust", "train clean", "holdout robust") if adversarial else ("train acc",)
    for column in ("epoch", "loss", *train_columns, "val acc", "seconds", "img/s"):
        table.add_column(column, justify="right")
    for h in result.history:
        cells = [_pct(h[k]) if k in h else "-" for k in ("train_clean_accuracy", "holdout_robust_accuracy")]
        table.add_row(
            str(int(h["epoch"])),
            f"{h['loss']:.4f}",
            _pct(h["train_accuracy"]),
            *(cells if adversarial else ()),
            _pct(h["val_accuracy"]) if "val_accuracy" in h else "-",
            f"{h['seconds']:.1f}",
            f"{h['samples_per_second']:,.0f}",
        )
    console.print(table)
    if result.stopped is not None:
        console.print(f"warning: {result.stopped['reason']}", style="yellow", markup=False, highlight=False)
    for warning in result.warnings:
        console.print(f"warning: {warning}", style="bold red", markup=False, highlight=False, soft_wrap=True)
    if result.weights == "best":
        console.print(
            f"saved the weights of epoch {result.best_epoch}, the most robust on the held-out images "
            f"under {validation_label(settings.robust_val_attack, settings.robust_val_steps)}",
            soft_wrap=True,
        )
    elif result.weights == "ema":
        console.print("saved the EMA of the weights")
    console.print(f"saved {outcome.path} (model.safetensors, card.json, checkpoint.pt, history.json)")
    return 0


def _cmd_eval(args: argparse.Namespace, console: Console) -> int:
    from advrobust.config import EvalSettings, build_settings, read_yaml
    from advrobust.runs import eval_run

    config = read_yaml(args.config) if args.config else {}
    settings = build_settings(EvalSettings, config, _overrides(args, ("command", "config", "quiet")))
    with _progress(console, args.quiet, "attack") as bar:
        outcome = eval_run(settings, progress=bar)
    if not distributed.info().is_main:
        return 0  # rank 0 prints and writes for the whole group
    results = outcome.results
    first = results[0]
    table = Table(
        title=f"{settings.model} on {first.meta['data']['name']} ({first.n} samples, {settings.norm}, 95% CI)",
        caption="per attack: robust accuracy after it and every attack before it (cascade)"
        if first.cascade
        else "per attack: its own robust accuracy on every sample",
    )
    table.add_column("eps", justify="right")
    table.add_column("clean", justify="right")
    for attack in first.attacks:
        table.add_column(attack.label, justify="right")
    table.add_column("robust", justify="right")
    table.add_column("seconds", justify="right")
    for result in results:
        low, high = result.robust.interval
        table.add_row(
            f"{result.threat['eps']:g}",
            _pct(result.clean.value),
            *(_pct(a.accuracy.value) for a in result.attacks),
            f"{_pct(result.robust.value)} [{100 * low:.1f}, {100 * high:.1f}]",
            f"{result.seconds:.1f}",
        )
        for attack in result.attacks:
            if attack.violations:
                console.print(
                    f"[red]warning: {attack.label} returned {attack.violations} points outside the threat model[/red]"
                )
    console.print(table)
    if "access_note" in first.meta:
        console.print(f"note: {first.meta['access_note']}", markup=False, highlight=False, soft_wrap=True)
    labels = [a.label for a in first.attacks]
    if first.meta.get("access") == "white-box" and not any(
        name in label for label in labels for name in ("apgd", "square", "fab", "cw")
    ):
        console.print(
            f"note: {' and '.join(labels)} only bound robust accuracy from above; `--suite standard` "
            "(AutoAttack's recipe) is the full test",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    for note in ("amp_note", "adaptive_note", "saturation_note", "nonfinite_note", "curve_note"):
        # Each eps's own note (the same text once); the eps is named where the evaluations differ.
        said: set[str] = set()
        for result in results:
            text = result.meta.get(note)
            if not text or text in said:
                continue
            said.add(text)
            where = (
                f"at eps {result.threat['eps']:g}: "
                if len(results) > 1 and note in ("saturation_note", "nonfinite_note", "curve_note")
                else ""
            )
            kind = "note" if note == "curve_note" else "warning"
            console.print(
                f"{kind}: {where}{text}",
                style=None if kind == "note" else "red",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
    if outcome.curve is not None:
        curve = outcome.curve
        chart = Table(title=f"Robustness curve ({curve.norm}; from {', '.join(curve.sources)})")
        chart.add_column("eps", justify="right")
        chart.add_column("robust accuracy", justify="right")
        for eps, acc, low, high in zip(curve.eps, curve.accuracy, curve.ci_low, curve.ci_high, strict=True):
            chart.add_row(f"{eps:.4g}", f"{_pct(acc)} [{100 * low:.1f}, {100 * high:.1f}]")
        console.print(chart)
    if settings.json_path:
        console.print(f"wrote {settings.json_path}")
    return 0


def _cmd_audit(args: argparse.Namespace, console: Console) -> int:
    from advrobust.config import AuditSettings, build_settings, read_yaml
    from advrobust.runs import audit_run

    config = read_yaml(args.config) if args.config else {}
    settings = build_settings(AuditSettings, config, _overrides(args, ("command", "config", "quiet")))
    with (
        console.status("auditing (PGD, FGSM, stronger PGD, eps sweep, Square, noise)", spinner="dots")
        if not args.quiet
        else _null()
    ):
        report = audit_run(settings)
    table = Table(
        title=f"Gradient-masking audit of {settings.model} ({settings.norm}, eps {settings.eps:g}, n={report.n})"
    )
    table.add_column("check")
    table.add_column("status")
    table.add_column("evidence")
    colours = {"pass": "green", "warn": "yellow", "fail": "red"}
    for check in report.checks:
        table.add_row(check.name, f"[{colours[check.status]}]{check.status}[/]", check.evidence)
    console.print(table)
    console.print(f"verdict: {report.verdict}")
    if settings.json_path:
        console.print(f"wrote {settings.json_path}")
    return 1 if report.status == "fail" else 0


def _cmd_defend(args: argparse.Namespace, console: Console) -> int:
    from advrobust.config import DefendSettings, build_settings, read_yaml
    from advrobust.runs import defend_run

    config = read_yaml(args.config) if args.config else {}
    settings = build_settings(DefendSettings, config, _overrides(args, ("command", "config")))
    outcome = defend_run(settings)
    model = outcome.model
    chain = " -> ".join(t.name + (f"({t.extra_repr()})" if t.extra_repr() else "") for t in model.chain())
    console.print(
        f"defended {settings.model}: {chain} -> {outcome.card.arch}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    needs = [
        name for name, needed in (("BPDA", not model.differentiable), ("EOT", model.randomized)) if needed
    ]
    if needs:
        console.print(
            f"it needs {' and '.join(needs)} to be evaluated honestly: advrobust eval --model {outcome.path} "
            "--suite adaptive",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    console.print(f"saved {outcome.path} (model.safetensors, card.json)", markup=False, highlight=False)
    return 0


def _cmd_certify(args: argparse.Namespace, console: Console) -> int:
    from advrobust.config import CertifySettings, build_settings, read_yaml
    from advrobust.runs import certify_run

    config = read_yaml(args.config) if args.config else {}
    settings = build_settings(CertifySettings, config, _overrides(args, ("command", "config", "quiet")))
    with _progress(console, args.quiet, "certify") as bar:
        cert, meta = certify_run(settings, progress=bar)
    table = Table(
        title=f"Certified l2 accuracy of {settings.model} smoothed at sigma {cert.sigma:g} "
        f"({meta['data']['name']}, {len(cert.labels)} images, n={cert.n}, alpha={cert.alpha:g})"
    )
    table.add_column("radius", justify="right")
    table.add_column("certified accuracy", justify="right")
    for radius, accuracy in zip(cert.radii, cert.certified, strict=True):
        table.add_row(f"{radius:g}", _pct(accuracy))
    console.print(table)
    console.print(
        f"smoothed accuracy {_pct(cert.accuracy)}, abstained {_pct(cert.abstained)}, {cert.seconds:.1f} s"
    )
    if settings.json_path:
        console.print(f"wrote {settings.json_path}")
    return 0


EPILOG_REPORT = """examples:
  advrobust report advrobust-demo                         # everything the demo wrote
  advrobust report runs/mnist-std runs/mnist-pgd runs/mnist-jpeg --out report/ --card
  advrobust report report/report.json runs/mnist-trades   # merge a new run into an earlier report
"""


def _report_parser(sub: Any) -> None:
    rep = sub.add_parser(
        "report",
        help="write an HTML report (plots, gallery, audit, provenance), Markdown cards and merged JSON",
        description="Gather run directories (card.json, history.json), evaluation and audit JSON files and "
        "earlier report.json files, and write one self-contained report.html plus the report.json it was "
        "built from. A folder is searched for run directories and result files.",
        epilog=EPILOG_REPORT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rep.add_argument("inputs", nargs="+", metavar="RUN_DIR_OR_JSON", help="run directories and JSON files")
    rep.add_argument("--out", default="report", help="folder to write (default: %(default)s)")
    rep.add_argument("--title", help="report title")
    rep.add_argument(
        "--norm", choices=["linf", "l2", "l1"], help="norm to compare models at (default: the most evaluated)"
    )
    rep.add_argument(
        "--eps", type=float, help="eps to compare models at (default: the largest all models share)"
    )
    rep.add_argument(
        "--examples",
        type=int,
        default=6,
        help="adversarial examples per model, re-run from the run directory (default: %(default)s)",
    )
    rep.add_argument("--card", action="store_true", help="also write a Markdown robustness card per model")
    rep.add_argument("--json", metavar="PATH", help="also write the merged report JSON to PATH")
    rep.add_argument("--device", help="device for the gallery's attacks: cpu, cuda, ... (default: cpu)")
    rep.add_argument("--quiet", action="store_true", help="no spinner")


def _cmd_report(args: argparse.Namespace, console: Console) -> int:
    from advrobust.fileio import atomic_write_json
    from advrobust.report import build_report, summary_rows, verdict

    with console.status("building the report", spinner="dots") if not args.quiet else _null():
        report = build_report(
            args.inputs,
            args.out,
            title=args.title,
            norm=args.norm,
            eps=args.eps,
            examples=args.examples,
            cards=args.card,
            device=args.device,
        )
    headline = report.headline
    threat = f"{headline.norm} eps {headline.eps:g}" if headline else "-"
    table = Table(title=f"{len(report.data.models)} model(s) compared at {threat} (95% CI)")
    for column in ("model", "defense", "clean", f"robust ({threat})", "training", "audit"):
        table.add_column(column, justify="left" if column in ("model", "defense", "audit") else "right")
    for row in summary_rows(report.data.models, headline):
        table.add_row(
            row.name,
            row.defense,
            "-" if row.clean is None else _pct(row.clean.value),
            "-" if row.robust is None else str(row.robust).split(" (n=")[0],
            "-" if row.training_seconds is None else f"{row.training_seconds:.1f} s",
            row.audit or "not run",
        )
    console.print(table)
    for line in verdict(report.data.models, headline):
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    if args.json:
        atomic_write_json(args.json, report.data.to_dict())
    for path in report.card_paths:
        console.print(f"wrote {path}", markup=False, highlight=False, soft_wrap=True)
    console.print(
        f"wrote {report.json_path}" + (f" and {args.json}" if args.json else ""),
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    console.print(f"report: {report.html_path}", markup=False, highlight=False, soft_wrap=True)
    return 0


@contextmanager
def _null() -> Iterator[None]:
    yield None


def _console(*, stderr: bool) -> Console:
    """Rich's console. Output that is not a terminal (a pipe, a log file) gets room for whole tables instead
    of rich's 80 columns, unless COLUMNS says otherwise."""
    stream = sys.stderr if stderr else sys.stdout
    piped = not (hasattr(stream, "isatty") and stream.isatty())
    return Console(stderr=stderr, width=LOG_WIDTH if piped and "COLUMNS" not in os.environ else None)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``advrobust`` command; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    console = _console(stderr=False)
    errors = _console(stderr=True)
    commands = {
        "demo": _cmd_demo,
        "train": _cmd_train,
        "eval": _cmd_eval,
        "audit": _cmd_audit,
        "defend": _cmd_defend,
        "certify": _cmd_certify,
        "report": _cmd_report,
        "serve": _cmd_serve,
    }
    finished = False
    try:
        status = commands[args.command](args, console)
        finished = True
        return status
    except AdvrobustError as exc:
        errors.print(f"advrobust {args.command}: error: {exc}", markup=False, highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        errors.print("interrupted", markup=False)
        return 130
    finally:
        distributed.shutdown(wait=finished)


def run() -> int:
    """The ``advrobust`` command itself: glibc's malloc thresholds raised for this process (unless the user
    chose an allocator, ``advrobust.allocator``), then ``main`` on the command line."""
    tune_malloc()
    return main()


if __name__ == "__main__":
    sys.exit(run())
