"""Rebuild the bundled mnist-mini dataset (5,000 train + 1,000 test MNIST digits) from the official files.

    python scripts/build_mnist_mini.py --source ../shared/data/mnist --out src/advrobust/data/bundled/

The four MNIST .gz files are MD5-verified first; the same files and seed give byte-identical output.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from advrobust.data.bundled import JSON_NAME, NPZ_NAME, SEED, build_mnist_mini

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "advrobust" / "data" / "bundled"


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, build, and print where the files went."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", type=Path, required=True, help="folder with the four MNIST .gz files")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="output folder (default: the package's)"
    )
    parser.add_argument("--seed", type=int, default=SEED, help=f"selection seed (default {SEED})")
    args = parser.parse_args(argv)
    meta = build_mnist_mini(args.source, args.out, seed=args.seed)
    print(f"wrote {args.out / NPZ_NAME} ({meta['npz_bytes']} bytes, sha256 {meta['npz_sha256']})")
    print(f"wrote {args.out / JSON_NAME}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
