"""``demo-train``: train the bundled demo model on the digits (deterministic per seed)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import FpgmError

__all__ = ["register"]


def _cmd_demo_train(args: argparse.Namespace) -> dict:
    from .. import demo

    if args.epochs < 1:
        raise FpgmError(f"--epochs must be at least 1, got {args.epochs}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise FpgmError(f"--out {args.out!r} exists and is not a directory")
    existing = [name for name in (demo.DEMO_CHECKPOINT.name, demo.DEMO_METRICS.name) if (out / name).exists()]
    if existing and not args.overwrite:
        # The committed checkpoint lives in fpgm_core/assets: re-creating it must be asked for twice.
        raise FpgmError(f"{out} already holds {', '.join(existing)}: pass --overwrite to replace them")

    def report(epoch: int, epochs: int, loss: float) -> None:
        if not args.quiet:
            print(f"epoch {epoch}/{epochs}  loss {loss:.4f}", file=sys.stderr, flush=True)

    model, metrics = demo.train_demo(seed=args.seed, epochs=args.epochs, progress=report)
    weights_path, metrics_path = demo.save_demo_checkpoint(model, metrics, out)
    result = {**metrics, "checkpoint": str(weights_path), "metrics": str(metrics_path)}
    if not args.json:
        print(f"test top-1 {metrics['test_top1']:.2%} ({metrics['test_correct']}/{metrics['n_test']}); wrote {weights_path} and {metrics_path}")
    return result


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``demo-train``."""
    train = commands.add_parser("demo-train", help="train the bundled demo model on the digits (deterministic per seed)")
    train.add_argument("--seed", type=int, default=0, help="seed of the split, the init and the batches (default 0)")
    train.add_argument("--epochs", type=int, default=30, help="training epochs (default 30)")
    train.add_argument("--out", required=True, help="directory for demo.safetensors and demo.json (fpgm_core/assets replaces the committed ones)")
    train.add_argument("--overwrite", action="store_true", help="replace demo.safetensors / demo.json already in --out")
    train.add_argument("--quiet", action="store_true", help="no per-epoch progress on stderr")
    train.add_argument("--json", action="store_true", help="print JSON")
    train.set_defaults(run=_cmd_demo_train)
