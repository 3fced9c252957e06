"""The ``fusion-train`` command line (also ``python -m fusion_train``).

Sub-commands:

* ``fusion-train data``: build (or load from the cache) the music21 reference data and print a
  summary and where the cache lives; ``--synthetic N`` inspects the synthetic twin instead.
  Rendered pieces are cached one by one, so an interrupted build resumes where it stopped.
* ``fusion-train head --recipe sf-normuon --out runs/head …``: train a control head
  (:func:`fusion_train.train_head`), keep ``best.safetensors``, write ``last.safetensors``,
  ``telemetry.jsonl``, ``training.png`` and (with ``--state-every``) ``training_state.safetensors``;
  ``--resume`` continues. Without ``--out`` the run goes to a new ``runs/head-<recipe>-<time>``
  folder, printed at the start.
* ``fusion-train eval CHECKPOINT``: load a head (:func:`fusion_infer.load_head`) and report the
  validation metrics. By default it rebuilds the data the head was trained on and validates with
  the seeds and t-grid training used (both recorded in the checkpoint); options given on the
  command line override them, with a warning when they differ from what training used.
* ``fusion-train plot RUN_DIR``: draw the run's loss, validation MAE and γ (the Polyak-scaled
  learning rate) from ``telemetry.jsonl`` to a PNG.

Every option's help gives its default. Bad arguments exit with status 2 and a message naming the
flag and the allowed values; Ctrl-C ends with one line saying what was kept (exit status 130).
Building the parser imports neither torch nor the training code, so ``--help`` is fast.

Example:
    >>> main(["head", "--synthetic", "12", "--frames", "16", "--steps", "2", "--dim", "32",
    ...       "--depth", "1", "--heads", "2", "--no-progress", "--recipe", "adamw"])  # doctest: +SKIP
    0
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["USER_ERRORS", "build_parser", "main"]

# The choices are spelled out here rather than imported, so that building the parser (and so
# `--help`) does not import torch; tests/train/test_cli.py checks they equal the library's.
TRAIN_RECIPES = ("adamw", "muon", "muon+mona", "sf-normuon", "full")
LOSSES = ("huber", "l1", "mse")
NOISE_SCHEDULES = ("rectified_flow", "vp_cosine")
HOT_DTYPES = ("bf16", "fp16", "fp16_safe", "fp32")
DEFAULT_RUNS_DIR = "runs"
EXIT_INTERRUPTED = 130  # the shell convention for SIGINT

# Library errors name config fields; the user typed flags. Field → flag, for error messages.
FIELD_FLAGS = {
    "dim": "--dim", "depth": "--depth", "heads": "--heads", "recipe": "--recipe", "lr": "--lr",
    "weight_decay": "--weight-decay", "warmup_steps": "--warmup-steps", "steps": "--steps",
    "batch_size": "--batch-size", "loss": "--loss", "huber_delta": "--huber-delta",
    "noise_schedule": "--noise-schedule", "grad_clip": "--grad-clip", "seed": "--seed",
    "device": "--device", "hot_dtype": "--hot-dtype", "val_every": "--val-every",
    "val_seeds": "--val-seeds", "val_t_buckets": "--val-t-buckets", "out_dir": "--out",
    "state_every": "--state-every", "resume_from": "--resume", "n_pieces": "--pieces",
    "excerpts_per_piece": "--excerpts-per-piece", "frames": "--frames", "workers": "--workers",
}
_FIELD_RE = re.compile(
    r"(?:\b[A-Z]\w*Config\.|(?<![\w.\-]))(?P<field>"
    + "|".join(sorted(FIELD_FLAGS, key=len, reverse=True))
    + r")\b(?=\s*(?:\(|=|must\b|is\b|has\b|needs\b))"
)


def name_flags(message: str) -> str:
    """Rewrite config-field names in a library error message as the flags that set them.

    Example:
        >>> name_flags("ControlHeadConfig.dim (30) must be divisible by heads (8)")
        '--dim (30) must be divisible by --heads (8)'
    """
    return _FIELD_RE.sub(lambda m: FIELD_FLAGS[m.group("field")], message)


class CliError(Exception):
    """A bad command line found after parsing (printed as ``error: …``, exit status 2)."""


#: Errors that are the user's to fix — bad values, a missing, unreadable, corrupt or crafted file
#: (``fusion_infer.CheckpointError`` is a ``ValueError``), a full disk (``OSError``) — which
#: :func:`main` prints as one ``fusion-train <cmd>: error: …`` line with exit status 2. Spelled
#: with builtins only, so that building the parser imports no torch.
USER_ERRORS = (CliError, ValueError, TypeError, NotImplementedError, OSError, ImportError)


class _HelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: …)`` to every option whose help does not already state its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default is argparse.SUPPRESS or not action.option_strings:
            return text
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            return text + (" (default: on)" if action.default else " (default: off)")
        if action.default is None:
            return text
        return text + " (default: %(default)s)"


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


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("fusion-dit")
    except metadata.PackageNotFoundError:  # running from a source tree without `pip install`
        pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
        if pyproject.is_file():
            found = re.search(r'^version\s*=\s*"([^"]+)"', pyproject.read_text(encoding="utf-8"), re.M)
            if found:
                return f"{found.group(1)} (source tree)"
        return "unknown"


# --------------------------------------------------------------------------- data options
_DATA_DEFAULTS = {"pieces": 200, "excerpts_per_piece": 4, "frames": 256, "data_seed": 0}


def _add_data_args(p: argparse.ArgumentParser, *, from_checkpoint: bool = False) -> None:
    """The data options. For ``eval`` they default to None: "as recorded in the checkpoint"."""
    g = p.add_argument_group("data")

    recorded = " (default: as recorded in the checkpoint)" if from_checkpoint else ""

    def default(name: str) -> Any:
        return None if from_checkpoint else _DATA_DEFAULTS[name]

    g.add_argument("--synthetic", type=_positive_int, metavar="N",
                   help="use N synthetic excerpts (enveloped tones, no music21)"
                        + (recorded or " (default: the music21 reference data)"))
    g.add_argument("--pieces", type=_positive_int, default=default("pieces"),
                   help="music21 pieces to render" + recorded)
    g.add_argument("--excerpts-per-piece", type=_positive_int, default=default("excerpts_per_piece"),
                   help="excerpts cut from each piece" + recorded)
    g.add_argument("--frames", type=_positive_int, default=default("frames"),
                   help="frames per excerpt (256 ≈ 11.9 s at 21.5 frames/s)" + recorded)
    g.add_argument("--data-seed", type=_non_negative_int, default=default("data_seed"),
                   help="seed of piece order, performance and split" + recorded)
    g.add_argument("--cache-dir", metavar="DIR",
                   help="reference-data cache root (default: $FUSION_CACHE_DIR, else "
                        "$XDG_CACHE_HOME/fusion, else ~/.cache/fusion)")
    g.add_argument("--workers", type=_positive_int, default=1, help="processes rendering pieces")


def _data_description(args: argparse.Namespace) -> dict[str, Any]:
    """The data the command line asks for, as a :func:`fusion_train.data.describe_data` dict."""
    if args.synthetic is not None:
        if args.frames < 8:
            raise CliError(f"--frames must be >= 8 for synthetic data, got {args.frames}")
        return {"source": "synthetic", "n": args.synthetic, "frames": args.frames, "seed": args.data_seed,
                "active_prob": 0.8, "level_db": [-30.0, -6.0], "val_fraction": 0.25}
    from .data import ReferenceDataConfig

    cfg = ReferenceDataConfig(n_pieces=args.pieces, excerpts_per_piece=args.excerpts_per_piece,
                              frames=args.frames, seed=args.data_seed)
    return {"source": "music21", "config": cfg.to_dict()}


def _print_cache_location(args: argparse.Namespace, desc: dict[str, Any], quiet: bool) -> None:
    if desc["source"] != "music21":
        return
    from .data import resolve_cache_root

    root = resolve_cache_root(args.cache_dir)
    args._interrupt_note = (f"rendered pieces are kept in {root / 'reference_data' / 'pieces'}; "
                            "run the same command again to resume")
    if not quiet:
        print(f"data cache: {root / 'reference_data'} (move it with --cache-dir or $FUSION_CACHE_DIR)",
              file=sys.stderr)


def _load(args: argparse.Namespace, desc: dict[str, Any], progress: bool) -> Any:
    from .data import data_from_description

    _print_cache_location(args, desc, quiet=not progress)
    return data_from_description(desc, cache_dir=args.cache_dir, progress=progress, workers=args.workers)


def _check_device(spec: str) -> str:
    """``--device`` must name a device this machine has; returns it unchanged."""
    import torch

    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise CliError(f"--device {spec!r} is not a torch device; use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CliError(f"--device {spec}: CUDA is not available here (torch {torch.__version__}); "
                           "use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CliError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise CliError(f"--device {spec}: MPS is not available here; use --device cpu")
    elif device.type != "cpu":
        raise CliError(f"--device {spec}: unsupported device type {device.type!r}; use cpu, cuda or mps")
    return spec


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``fusion-train`` (imports nothing heavy)."""
    parser = argparse.ArgumentParser(
        prog="fusion-train", formatter_class=_HelpFormatter,
        description="Train LatCH-style control heads with FusionOpt and export averaged-weight checkpoints.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="{data,head,eval,plot}")
    sub.required = True

    p_data = sub.add_parser("data", help="build or inspect the reference data", formatter_class=_HelpFormatter,
                            description="Build (or load from the cache) the reference data and print a summary.")
    _add_data_args(p_data)
    p_data.add_argument("--json", action="store_true", help="print the summary as JSON")

    p_head = sub.add_parser("head", help="train a control head and export it", formatter_class=_HelpFormatter,
                            description="Train a LatCH-F control head (forward noising, t ~ U[0,1]).")
    _add_data_args(p_head)
    t = p_head.add_argument_group("training")
    t.add_argument("--recipe", choices=TRAIN_RECIPES, default="sf-normuon", help="optimizer recipe")
    t.add_argument("--lr", type=_positive_float,
                   help="learning rate (default: per recipe, 4e-3 for FusionOpt recipes, 1e-3 for adamw)")
    t.add_argument("--weight-decay", type=_finite_float, default=0.0, help="decoupled weight decay")
    t.add_argument("--warmup-steps", type=_non_negative_int, default=0,
                   help="linear lr warm-up steps (FusionOpt recipes)")
    t.add_argument("--steps", type=_positive_int, default=2000, help="optimizer steps")
    t.add_argument("--batch-size", type=_positive_int, default=16, help="excerpts per step")
    t.add_argument("--loss", choices=LOSSES, default="huber", help="loss on standardised targets")
    t.add_argument("--huber-delta", type=_positive_float, default=1.0, help="Huber transition point")
    t.add_argument("--noise-schedule", choices=NOISE_SCHEDULES, default="rectified_flow",
                   help="forward noising the head learns to see through")
    t.add_argument("--grad-clip", type=_positive_float, metavar="NORM",
                   help="clip the global gradient norm to NORM (default: no clipping)")
    t.add_argument("--seed", type=_non_negative_int, default=0, help="seed of init, data order and noise")
    t.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:N or mps")
    t.add_argument("--hot-dtype", choices=HOT_DTYPES,
                   help="Newton–Schulz matmul dtype (default: fp32 on CPU, bf16 elsewhere)")
    m = p_head.add_argument_group("model")
    m.add_argument("--dim", type=_positive_int, default=256, help="head width (divisible by --heads)")
    m.add_argument("--depth", type=_positive_int, default=4, help="adaLN-zero blocks")
    m.add_argument("--heads", type=_positive_int, default=8, help="attention heads per block")
    v = p_head.add_argument_group("validation and output")
    v.add_argument("--val-every", type=_non_negative_int, default=200,
                   help="validate (and keep the best checkpoint) every N steps; 0: only at the end")
    v.add_argument("--val-seeds", type=_positive_int, default=2, help="fixed noise seeds per validation")
    v.add_argument("--val-t-buckets", type=_positive_int, default=10, help="points of the validation t-grid")
    v.add_argument("--out", metavar="DIR",
                   help=f"output folder (default: a new {DEFAULT_RUNS_DIR}/head-<recipe>-<date-time>, printed)")
    v.add_argument("--state-every", type=_non_negative_int, default=0,
                   help="save the resumable training state every N steps; 0: never")
    v.add_argument("--resume", metavar="STATE", help="training_state.safetensors to resume from (default: start fresh)")
    v.add_argument("--no-progress", action="store_true", help="no progress bars")
    v.add_argument("--no-plot", action="store_true", help="do not draw training.png at the end")
    t.add_argument("--fsdp", action="store_true",
                   help="under torchrun: shard the head with FSDP2 instead of DDP (default: DDP; docs/distributed.md)")
    d = p_head.add_argument_group("diversity training")
    d.add_argument("--diversity-reference", metavar="CHECKPOINT",
                   help="frozen reference head to repel from (default: none, plain training)")
    d.add_argument("--diversity-lambda", type=_finite_float, default=0.3, help="weight of the repulsion term")
    d.add_argument("--diversity-bound", type=_positive_float, default=1.0, help="cap of the repulsion term")
    d.add_argument("--diversity-warmup", type=_non_negative_int, default=0, help="steps before repulsion starts")
    d.add_argument("--warm-start", action="store_true", help="start from the reference head's weights")

    p_eval = sub.add_parser("eval", help="evaluate a checkpoint on the validation split",
                            formatter_class=_HelpFormatter,
                            description="Load a head checkpoint and report validation metrics (dB). Data and "
                                        "validation settings default to those recorded at training time.")
    p_eval.add_argument("checkpoint", help="a .safetensors file written by fusion-train head")
    _add_data_args(p_eval, from_checkpoint=True)
    p_eval.add_argument("--val-seeds", type=_positive_int,
                        help="fixed noise seeds (default: the ones training validated with)")
    p_eval.add_argument("--val-t-buckets", type=_positive_int,
                        help="points of the t-grid (default: the grid training validated with)")
    p_eval.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:N or mps")
    p_eval.add_argument("--json", action="store_true", help="print the metrics as JSON")

    p_plot = sub.add_parser("plot", help="plot a run's loss, validation MAE and γ", formatter_class=_HelpFormatter,
                            description="Draw loss, validation MAE and the learning rate γ of a run from its "
                                        "telemetry.jsonl (needs matplotlib).")
    p_plot.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by fusion-train head")
    p_plot.add_argument("--out", metavar="PNG", help="image to write (default: RUN_DIR/training.png)")
    return parser


# --------------------------------------------------------------------------- commands
def _cmd_data(args: argparse.Namespace) -> int:
    desc = _data_description(args)
    data = _load(args, desc, progress=not args.json)
    if args.json:
        print(json.dumps({"source": data.source, "excerpts": len(data), "shape": list(data.latents.shape),
                          "controls": list(data.control_names), "train": int(data.train_index.numel()),
                          "val": int(data.val_index.numel()), "cache": data.cache_status,
                          "cache_folder": data.cache_folder}))
    else:
        print(data.summary())
    return 0


def _default_out(recipe: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(DEFAULT_RUNS_DIR) / f"head-{recipe}-{stamp}"
    n = 1
    while out.exists():
        n += 1
        out = Path(DEFAULT_RUNS_DIR) / f"head-{recipe}-{stamp}-{n}"
    return out


def _kept_files(out: Path) -> str:
    names = [n for n in ("best.safetensors", "last.safetensors", "training_state.pt", "telemetry.jsonl")
             if (out / n).is_file()]
    return ", ".join(names) if names else "nothing yet"


def _cmd_head(args: argparse.Namespace) -> int:
    if args.diversity_reference is None and (args.warm_start or args.diversity_warmup):
        raise CliError("--warm-start and --diversity-warmup need --diversity-reference")
    if args.hot_dtype and args.recipe == "adamw":
        raise CliError("--hot-dtype applies to FusionOpt recipes, not --recipe adamw")
    if args.dim % args.heads:
        raise CliError(f"--dim ({args.dim}) must be divisible by --heads ({args.heads})")
    _check_device(args.device)
    import torch.distributed as tdist

    from .training.parallel import init_from_env, is_writer

    multi = init_from_env(args.device)  # torchrun: start the process group (WORLD_SIZE > 1)
    if args.fsdp and not multi:
        raise CliError("--fsdp needs several processes: launch with torchrun --nproc_per_node N")
    out = Path(args.out) if args.out is not None else _default_out(args.recipe)
    if is_writer():
        print(f"writing to {out}/" + ("" if args.out is not None else " (set --out to choose)"), file=sys.stderr)
    desc = _data_description(args)
    if multi and not is_writer():
        tdist.barrier()  # let rank 0 build (and cache) the data first
    data = _load(args, desc, progress=not args.no_progress and is_writer())
    if multi and is_writer():
        tdist.barrier()

    from fusion_infer.models.control_head import ControlHeadConfig

    from .training.diversity import DiversityConfig
    from .training.loop import HeadTrainConfig, train_head

    args._interrupt_note = None
    head = ControlHeadConfig(in_channels=int(data.latents.shape[1]), out_channels=int(data.controls.shape[1]),
                             dim=args.dim, depth=args.depth, heads=args.heads)
    diversity = None
    if args.diversity_reference is not None:
        diversity = DiversityConfig(args.diversity_reference, args.diversity_lambda, args.diversity_bound,
                                    args.diversity_warmup, args.warm_start)
    options = {"hot_dtype": args.hot_dtype} if args.hot_dtype else {}
    config = HeadTrainConfig(
        recipe=args.recipe, lr=args.lr, weight_decay=args.weight_decay, warmup_steps=args.warmup_steps,
        optimizer_options=options, head=head, steps=args.steps, batch_size=args.batch_size, loss=args.loss,
        huber_delta=args.huber_delta, noise_schedule=args.noise_schedule, grad_clip=args.grad_clip,
        seed=args.seed, val_every=args.val_every, val_seeds=tuple(range(args.val_seeds)),
        val_t_buckets=args.val_t_buckets, out_dir=str(out), state_every=args.state_every,
        resume_from=args.resume, progress=not args.no_progress and is_writer(), device=args.device,
        diversity=diversity, parallel="fsdp" if args.fsdp else "auto",
    )
    args._interrupt_out = out
    try:
        result = train_head(config, data)
    finally:
        writer = is_writer()
        if multi:
            tdist.destroy_process_group()
    args._interrupt_out = None
    if not writer:
        return 0
    print(f"best val median MAE {result.best_score:.3f} dB at step {result.best_step} "
          f"({result.steps} steps, {result.seconds:.1f} s)")
    if result.best_path is not None:
        print(f"best checkpoint: {result.best_path}")
    print(f"last checkpoint: {result.last_path}")
    if not args.no_plot:
        try:
            from .training.plot import plot_run
        except ImportError as exc:  # matplotlib is the optional `viz` extra
            print(f"no training.png: {exc}", file=sys.stderr)
        else:
            print(f"plot: {plot_run(out)}")
    return 0


def _warn(message: str) -> None:
    print(f"fusion-train: warning: {message}", file=sys.stderr)


def _eval_data(args: argparse.Namespace, recorded: dict[str, Any] | None) -> dict[str, Any]:
    """The data ``eval`` uses: the recorded one, with any data option given on the command line."""
    from .data.describe import summarise_description

    given = {k: getattr(args, k) for k in ("synthetic", "pieces", "excerpts_per_piece", "frames", "data_seed")
             if getattr(args, k) is not None}
    if recorded is None:
        for k, v in _DATA_DEFAULTS.items():
            if getattr(args, k) is None:
                setattr(args, k, v)
        desc = _data_description(args)
        if not given:
            _warn(f"{args.checkpoint} records no training data; evaluating on the default data, "
                  f"{summarise_description(desc)}")
        return desc
    if not given:
        return recorded
    # Start from what training used, change what the command line says.
    if args.synthetic is None and recorded.get("source") == "music21":
        c = recorded["config"]
        args.pieces = c["n_pieces"] if args.pieces is None else args.pieces
        args.excerpts_per_piece = c["excerpts_per_piece"] if args.excerpts_per_piece is None else args.excerpts_per_piece
        args.frames = c["frames"] if args.frames is None else args.frames
        args.data_seed = c["seed"] if args.data_seed is None else args.data_seed
        desc = _data_description(args)
        desc["config"] = {**c, "n_pieces": args.pieces, "excerpts_per_piece": args.excerpts_per_piece,
                          "frames": args.frames, "seed": args.data_seed}
    else:
        recorded_synth = recorded if recorded.get("source") == "synthetic" else {}
        if args.synthetic is None:
            args.synthetic = recorded_synth.get("n", 200)
        args.frames = args.frames if args.frames is not None else recorded_synth.get("frames", _DATA_DEFAULTS["frames"])
        args.data_seed = args.data_seed if args.data_seed is not None else recorded_synth.get("seed", 0)
        desc = _data_description(args)
    if summarise_description(desc) != summarise_description(recorded) or desc.get("config") != recorded.get("config"):
        _warn(f"evaluating on {summarise_description(desc)}, but the head was trained on "
              f"{summarise_description(recorded)}")
    return desc


def _eval_validation(args: argparse.Namespace, recorded: dict[str, Any] | None) -> tuple[tuple[int, ...], int, int | None]:
    recorded = recorded or {}
    seeds = tuple(recorded.get("seeds", (0, 1)))
    buckets = int(recorded.get("t_buckets", 10))
    cap = recorded.get("max_excerpts")
    if args.val_seeds is not None:
        wanted = tuple(range(args.val_seeds))
        if recorded and wanted != seeds:
            _warn(f"--val-seeds {args.val_seeds} uses seeds {list(wanted)}; training validated with {list(seeds)}")
        seeds = wanted
    if args.val_t_buckets is not None:
        if recorded and args.val_t_buckets != buckets:
            _warn(f"--val-t-buckets {args.val_t_buckets}; training validated with {buckets}")
        buckets = args.val_t_buckets
    return seeds, buckets, cap


def _cmd_eval(args: argparse.Namespace) -> int:
    from fusion_infer.checkpoint import read_metadata

    meta = read_metadata(args.checkpoint)  # a bad file fails before any data is built
    _check_device(args.device)
    extra = meta.get("extra", {})
    desc = _eval_data(args, extra.get("data"))
    seeds, buckets, cap = _eval_validation(args, extra.get("validation"))
    data = _load(args, desc, progress=not args.json)

    from fusion_infer.checkpoint import load_head

    from .training.loop import ValidationSet, t_grid, validate_head

    loaded = load_head(args.checkpoint, device=args.device)
    scaling = loaded.targets
    if scaling is None:
        raise CliError(f"checkpoint {args.checkpoint} records no target scaling (metadata 'targets')")
    if tuple(scaling.names) != tuple(data.control_names):
        raise CliError(f"checkpoint predicts {list(scaling.names)} but the data has {list(data.control_names)}")
    x_val, y_val = data.split("val")
    if cap is not None:
        x_val, y_val = x_val[:cap], y_val[:cap]
    val = ValidationSet(x_val, y_val, scaling.destandardize, seeds, t_grid(buckets), tuple(data.control_names))
    metrics = validate_head(loaded.model, val, loaded.noise_schedule, device=args.device)
    if args.json:
        print(json.dumps(metrics))
    else:
        from .data.describe import summarise_description

        print(f"{args.checkpoint}: {meta['model_class']} recipe={meta['recipe']} step={meta['step']} "
              f"schedule={meta['noise_schedule']} loss={meta['loss']} weights={meta['weights']}")
        print(f"  data: {summarise_description(desc)}; validation seeds {list(seeds)}, {buckets} t-buckets")
        for k, v in metrics.items():
            print(f"  {k:<36} {v:8.3f}")
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from .training.plot import plot_run

    print(plot_run(args.run_dir, args.out))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``fusion-train`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    ``argparse`` errors and ``--help`` exit via ``SystemExit`` as usual; errors from the library
    (:data:`USER_ERRORS`: bad values, unreadable or crafted checkpoints and training states, a full
    disk, unavailable recipes) print one ``fusion-train <cmd>: error: …`` line naming the flag and
    return 2; Ctrl-C prints one line and returns 130.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    args._interrupt_note, args._interrupt_out = None, None
    command = {"data": _cmd_data, "head": _cmd_head, "eval": _cmd_eval, "plot": _cmd_plot}[args.command]
    try:
        return command(args)
    except KeyboardInterrupt:
        if args._interrupt_out is not None:
            note = f"kept in {args._interrupt_out}/: {_kept_files(Path(args._interrupt_out))}"
        else:
            note = args._interrupt_note or "nothing was written"
        print(f"\nfusion-train {args.command}: interrupted; {note}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except USER_ERRORS as exc:
        message = " ".join(name_flags(str(exc)).split())  # one line, whatever the exception's text holds
        print(f"fusion-train {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # torchrun --nproc_per_node N -m fusion_train.cli head …
    sys.exit(main())
