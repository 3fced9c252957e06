"""The ``fusion-train`` command line (also ``python -m fusion_train``).

Sub-commands:

* ``fusion-train data``: build (or load from the cache) the music21 reference data and print a
  summary; ``--synthetic N`` inspects the synthetic twin instead.
* ``fusion-train head --recipe sf-normuon --out runs/head …``: train a control head
  (:func:`fusion_train.train_head`), keep ``best.safetensors``, write ``last.safetensors``,
  ``telemetry.jsonl`` and (with ``--state-every``) ``training_state.safetensors``; ``--resume`` continues.
* ``fusion-train eval CHECKPOINT``: load a head (:func:`fusion_infer.load_head`) and report the
  validation metrics on the data's validation split.

Every sub-command has ``--help``. Bad arguments exit with status 2 and a message naming the
argument and the allowed values.

Example:
    >>> main(["head", "--synthetic", "12", "--frames", "16", "--steps", "2", "--dim", "32",
    ...       "--depth", "1", "--heads", "2", "--no-progress", "--recipe", "adamw"])  # doctest: +SKIP
    0
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from fusion_infer.checkpoint import CheckpointError
from fusion_infer.noise_schedules import NOISE_SCHEDULES

from .training.loop import TRAIN_RECIPES
from .training.losses import LOSSES

__all__ = ["USER_ERRORS", "build_parser", "main"]

#: Errors that are the user's to fix — bad values, a missing, unreadable, corrupt or crafted file
#: (:class:`~fusion_infer.CheckpointError` is a ``ValueError``), a full disk (``OSError``) — which
#: :func:`main` prints as one ``fusion-train CMD: error: …`` line with exit status 2.
USER_ERRORS = (CheckpointError, ValueError, TypeError, NotImplementedError, OSError, ImportError)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite positive number, got {text!r}")
    return value


def _add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--synthetic", type=_positive_int, metavar="N",
                   help="use N synthetic excerpts (enveloped tones, no music21) instead of the reference data")
    g.add_argument("--pieces", type=_positive_int, default=200, help="music21 pieces to render (default 200)")
    g.add_argument("--excerpts-per-piece", type=_positive_int, default=4, help="excerpts per piece (default 4)")
    g.add_argument("--frames", type=_positive_int, default=256, help="frames per excerpt (default 256 ≈ 11.9 s)")
    g.add_argument("--data-seed", type=_non_negative_int, default=0, help="seed of the data (default 0)")
    g.add_argument("--cache-dir", help="reference-data cache root (default: the user's cache directory)")
    g.add_argument("--workers", type=_positive_int, default=1, help="rendering processes (default 1)")


def _load_data(args: argparse.Namespace, progress: bool) -> Any:
    if args.synthetic is not None:
        from .data import synthetic_data

        if args.frames < 8:
            raise ValueError(f"--frames must be >= 8 for synthetic data, got {args.frames}")
        return synthetic_data(args.synthetic, frames=args.frames, seed=args.data_seed)
    from .data import ReferenceDataConfig, build_reference_data

    cfg = ReferenceDataConfig(n_pieces=args.pieces, excerpts_per_piece=args.excerpts_per_piece,
                              frames=args.frames, seed=args.data_seed)
    return build_reference_data(cfg, cache_dir=args.cache_dir, progress=progress, workers=args.workers)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``fusion-train``."""
    parser = argparse.ArgumentParser(
        prog="fusion-train",
        description="Train LatCH-style control heads with FusionOpt and export averaged-weight checkpoints.",
    )
    sub = parser.add_subparsers(dest="command", metavar="{data,head,eval}")
    sub.required = True

    p_data = sub.add_parser("data", help="build or inspect the reference data",
                            description="Build (or load from the cache) the reference data and print a summary.")
    _add_data_args(p_data)
    p_data.add_argument("--json", action="store_true", help="print the summary as JSON")

    p_head = sub.add_parser("head", help="train a control head and export it",
                            description="Train a LatCH-F control head (forward noising, t ~ U[0,1]).")
    _add_data_args(p_head)
    t = p_head.add_argument_group("training")
    t.add_argument("--recipe", choices=TRAIN_RECIPES, default="sf-normuon", help="optimizer recipe (default sf-normuon)")
    t.add_argument("--lr", type=_positive_float, help="learning rate (default: per recipe)")
    t.add_argument("--weight-decay", type=float, default=0.0)
    t.add_argument("--warmup-steps", type=_non_negative_int, default=0, help="FusionOpt lr warm-up")
    t.add_argument("--steps", type=_positive_int, default=2000)
    t.add_argument("--batch-size", type=_positive_int, default=16)
    t.add_argument("--loss", choices=LOSSES, default="huber")
    t.add_argument("--huber-delta", type=_positive_float, default=1.0)
    t.add_argument("--noise-schedule", choices=sorted(NOISE_SCHEDULES), default="rectified_flow")
    t.add_argument("--grad-clip", type=_positive_float)
    t.add_argument("--seed", type=_non_negative_int, default=0)
    t.add_argument("--device", default="cpu", help="torch device (default cpu)")
    t.add_argument("--hot-dtype", choices=("bf16", "fp16", "fp16_safe", "fp32"),
                   help="Newton–Schulz matmul dtype (default: fp32 on CPU, bf16 elsewhere)")
    m = p_head.add_argument_group("model")
    m.add_argument("--dim", type=_positive_int, default=256)
    m.add_argument("--depth", type=_positive_int, default=4)
    m.add_argument("--heads", type=_positive_int, default=8)
    v = p_head.add_argument_group("validation and output")
    v.add_argument("--val-every", type=_non_negative_int, default=200)
    v.add_argument("--val-seeds", type=_positive_int, default=2, help="fixed noise seeds (default 2)")
    v.add_argument("--val-t-buckets", type=_positive_int, default=10)
    v.add_argument("--out", help="output folder (best/last checkpoints, telemetry)")
    v.add_argument("--state-every", type=_non_negative_int, default=0, help="save the training state every N steps")
    v.add_argument("--resume", help="training_state.safetensors to resume from")
    v.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    t.add_argument("--fsdp", action="store_true",
                   help="under torchrun: shard the head with FSDP2 instead of DDP (docs/distributed.md)")
    d = p_head.add_argument_group("diversity training")
    d.add_argument("--diversity-reference", metavar="CHECKPOINT", help="frozen reference head to repel from")
    d.add_argument("--diversity-lambda", type=float, default=0.3)
    d.add_argument("--diversity-bound", type=_positive_float, default=1.0)
    d.add_argument("--diversity-warmup", type=_non_negative_int, default=0)
    d.add_argument("--warm-start", action="store_true", help="start from the reference head's weights")

    p_eval = sub.add_parser("eval", help="evaluate a checkpoint on the validation split",
                            description="Load a head checkpoint and report validation metrics (dB).")
    p_eval.add_argument("checkpoint", help="a .safetensors file written by fusion-train head")
    _add_data_args(p_eval)
    p_eval.add_argument("--val-seeds", type=_positive_int, default=2)
    p_eval.add_argument("--val-t-buckets", type=_positive_int, default=10)
    p_eval.add_argument("--device", default="cpu")
    p_eval.add_argument("--json", action="store_true", help="print the metrics as JSON")
    return parser


def _cmd_data(args: argparse.Namespace) -> int:
    data = _load_data(args, progress=not args.json)
    if args.json:
        print(json.dumps({"source": data.source, "excerpts": len(data), "shape": list(data.latents.shape),
                          "controls": list(data.control_names), "train": int(data.train_index.numel()),
                          "val": int(data.val_index.numel()), "cache": data.cache_status}))
    else:
        print(data.summary())
    return 0


def _cmd_head(args: argparse.Namespace) -> int:
    from fusion_infer.models.control_head import ControlHeadConfig

    from .training.diversity import DiversityConfig
    from .training.loop import HeadTrainConfig, train_head

    if args.diversity_reference is None and (args.warm_start or args.diversity_warmup):
        raise ValueError("--warm-start and --diversity-warmup need --diversity-reference")
    import torch.distributed as tdist

    from .training.parallel import init_from_env, is_writer

    multi = init_from_env(args.device)  # torchrun: start the process group (WORLD_SIZE > 1)
    if args.fsdp and not multi:
        raise ValueError("--fsdp needs several processes: launch with torchrun --nproc_per_node N")
    if multi and not is_writer():
        tdist.barrier()  # let rank 0 build (and cache) the data first
    data = _load_data(args, progress=not args.no_progress and is_writer())
    if multi and is_writer():
        tdist.barrier()
    head = ControlHeadConfig(in_channels=int(data.latents.shape[1]), out_channels=int(data.controls.shape[1]),
                             dim=args.dim, depth=args.depth, heads=args.heads)
    diversity = None
    if args.diversity_reference is not None:
        diversity = DiversityConfig(args.diversity_reference, args.diversity_lambda, args.diversity_bound,
                                    args.diversity_warmup, args.warm_start)
    options = {"hot_dtype": args.hot_dtype} if args.hot_dtype else {}
    if options and args.recipe == "adamw":
        raise ValueError("--hot-dtype applies to FusionOpt recipes, not --recipe adamw")
    config = HeadTrainConfig(
        recipe=args.recipe, lr=args.lr, weight_decay=args.weight_decay, warmup_steps=args.warmup_steps,
        optimizer_options=options, head=head, steps=args.steps, batch_size=args.batch_size, loss=args.loss,
        huber_delta=args.huber_delta, noise_schedule=args.noise_schedule, grad_clip=args.grad_clip,
        seed=args.seed, val_every=args.val_every, val_seeds=tuple(range(args.val_seeds)),
        val_t_buckets=args.val_t_buckets, out_dir=args.out, state_every=args.state_every,
        resume_from=args.resume, progress=not args.no_progress and is_writer(), device=args.device,
        diversity=diversity, parallel="fsdp" if args.fsdp else "auto",
    )
    try:
        result = train_head(config, data)
    finally:
        writer = is_writer()
        if multi:
            tdist.destroy_process_group()
    if not writer:
        return 0
    print(f"best val median MAE {result.best_score:.3f} dB at step {result.best_step} "
          f"({result.steps} steps, {result.seconds:.1f} s)")
    if result.best_path is not None:
        print(f"best checkpoint: {result.best_path}")
        print(f"last checkpoint: {result.last_path}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from fusion_infer.checkpoint import load_head

    from .training.loop import ValidationSet, t_grid, validate_head

    loaded = load_head(args.checkpoint, device=args.device)
    data = _load_data(args, progress=not args.json)
    scaling = loaded.targets
    if scaling is None:
        raise ValueError(f"checkpoint {args.checkpoint} records no target scaling (metadata 'targets')")
    if tuple(scaling.names) != tuple(data.control_names):
        raise ValueError(f"checkpoint predicts {list(scaling.names)} but the data has {list(data.control_names)}")
    x_val, y_val = data.split("val")
    val = ValidationSet(x_val, y_val, scaling.destandardize, tuple(range(args.val_seeds)),
                        t_grid(args.val_t_buckets), tuple(data.control_names))
    metrics = validate_head(loaded.model, val, loaded.noise_schedule, device=args.device)
    if args.json:
        print(json.dumps(metrics))
    else:
        meta = loaded.metadata
        print(f"{args.checkpoint}: {meta['model_class']} recipe={meta['recipe']} step={meta['step']} "
              f"schedule={meta['noise_schedule']} loss={meta['loss']} weights={meta['weights']}")
        for k, v in metrics.items():
            print(f"  {k:<36} {v:8.3f}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``fusion-train`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    ``argparse`` errors and ``--help`` exit via ``SystemExit`` as usual; errors from the library
    (:data:`USER_ERRORS`: bad values, unreadable or crafted checkpoints and training states, a full
    disk, unavailable recipes) print one ``fusion-train CMD: error: …`` line and return 2.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    command = {"data": _cmd_data, "head": _cmd_head, "eval": _cmd_eval}[args.command]
    try:
        return command(args)
    except USER_ERRORS as exc:
        message = " ".join(str(exc).split())  # one line, whatever the exception's text holds
        print(f"fusion-train {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # torchrun --nproc_per_node N -m fusion_train.cli head …
    sys.exit(main())
