"""The package layout: public names, import direction, no import cycles, packaging.

* Each import package's ``__all__`` is pinned: adding or removing a public name is a deliberate
  change to this list, never a side effect of moving code.
* Imports point one way: ``fusion_train → fusion_infer ← fusion_diffusers``; ``fusion_infer``
  never imports ``fusion_train``, ``fusion_diffusers`` or ``diffusers``. Inside ``fusion_infer``
  the subpackages are layered (models below cache below guidance).
* Module-level imports between the project's own modules form no cycle.
* ``pyproject.toml`` lists every package directory, so a wheel is complete.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = {
    "fusion_infer": ROOT / "fusion_infer",
    "fusion_train": ROOT / "fusion_train",
    "fusion_diffusers": ROOT / "integrations" / "diffusers",
}

PUBLIC = {
    "fusion_train": [
        "COMPONENTS", "DiversityConfig", "DiversityLoss", "FusionOpt", "HeadTrainConfig", "RECIPES",
        "TRAIN_RECIPES", "TelemetryWriter", "TrainResult", "averaged_state_dict", "averaged_weights",
        "build_param_groups", "derivative_correlation", "export_checkpoint", "fit",
        "load_training_state", "lr_shape_scale", "make_optimizer", "orthogonalize", "read_telemetry",
        "resolve_components", "save_training_state", "summarise_groups", "task_loss", "train_head",
        "validate_head",
    ],
    "fusion_infer": [
        "AdaLNZeroBlock", "BaseDiT", "BoundedStore", "CHECKPOINT_FORMAT_VERSION", "CacheCore",
        "CacheStats", "CheckpointError", "ControlHead", "ControlHeadConfig", "CostItem", "FinalLayer",
        "HeadCost", "HeadGuidance", "LoadedHead", "Modulators", "NOISE_SCHEDULES", "NoiseSchedule",
        "RenderCaches", "ResidentReport", "SampleResult", "SelectiveTFG", "TargetScaling",
        "TimeConditioningCache", "TimestepEmbedder", "WeightOffload", "WeightSnapshot", "WeightWatcher",
        "apply_rotary", "base_dit_config", "bits_equal", "chunked_modulator_table", "compare_errors",
        "control_error", "dedupe", "float_bits", "get_noise_schedule", "head_cost", "head_cost_items",
        "load_head", "loudness_extractor", "make_key", "parameter_bytes", "read_metadata", "rf_sigmas",
        "rising_pause_falling", "rotary_tables", "row_bits", "row_keys", "sample", "sinusoidal_features",
        "split_modulator_table", "step_weight_schedule", "tensor_bits", "tensor_key", "validate_timesteps",
    ],
    "fusion_diffusers": [
        "EquivalenceReport", "ModulatorCache", "ModulatorCacheConfig", "Modulators", "PrecomputeReport",
        "ResidentReport", "UnsupportedModelError", "apply_modulator_cache", "compute_modulators",
        "disable_modulator_cache", "enable_modulator_cache", "get_modulator_cache", "patch_blocks",
        "precompute", "remove_modulator_cache", "resolve_family", "stats", "unpatch_blocks",
        "verify_equivalence",
    ],
}

#: For each fusion_infer subpackage, the sibling subpackages it must not import (layering).
INFER_LAYERS = {
    "models": {"cache", "guidance", "controls", "shrink", "checkpoint"},
    "cache": {"guidance", "controls", "shrink", "checkpoint"},
    "controls": {"models", "cache", "guidance", "shrink", "checkpoint"},
    "shrink": {"cache", "guidance", "controls", "checkpoint"},
}


def _modules(package: str) -> dict[str, Path]:
    """Dotted module name → file, for every module of ``package``."""
    base = PACKAGE_DIRS[package]
    out = {}
    for path in sorted(base.rglob("*.py")):
        rel = path.relative_to(base).with_suffix("")
        parts = [package, *rel.parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


ALL_MODULES = {name: path for pkg in PACKAGE_DIRS for name, path in _modules(pkg).items()}


def _imports(module: str, path: Path, *, top_level_only: bool) -> set[str]:
    """Absolute names of the modules ``module`` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_pkg = path.name == "__init__.py"
    package = module if is_pkg else module.rpartition(".")[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            for alias in node.names:  # `from . import corpus` imports a submodule
                if f"{target}.{alias.name}" in ALL_MODULES:
                    found.add(f"{target}.{alias.name}")
    return found


@pytest.mark.parametrize("package", sorted(PUBLIC))
def test_public_names_are_pinned(package):
    mod = __import__(package)
    assert sorted(mod.__all__) == sorted(PUBLIC[package])
    assert len(set(mod.__all__)) == len(mod.__all__), "duplicate names in __all__"
    missing = [name for name in mod.__all__ if not hasattr(mod, name)]
    assert not missing, f"{package}.__all__ names that do not exist: {missing}"


@pytest.mark.parametrize(
    "package, forbidden",
    [
        ("fusion_infer", ("fusion_train", "fusion_diffusers", "diffusers")),
        ("fusion_train", ("fusion_diffusers", "diffusers")),
        ("fusion_diffusers", ("fusion_train",)),
    ],
)
def test_import_direction(package, forbidden):
    bad = []
    for module, path in _modules(package).items():
        for target in _imports(module, path, top_level_only=False):
            if any(target == f or target.startswith(f + ".") for f in forbidden):
                bad.append(f"{module} imports {target}")
    assert not bad, "\n".join(bad)


def test_fusion_infer_subpackages_are_layered():
    bad = []
    for module, path in _modules("fusion_infer").items():
        parts = module.split(".")
        if len(parts) < 2 or parts[1] not in INFER_LAYERS:
            continue
        for target in _imports(module, path, top_level_only=False):
            tparts = target.split(".")
            if tparts[0] == "fusion_infer" and len(tparts) > 1 and tparts[1] in INFER_LAYERS[parts[1]]:
                bad.append(f"{module} imports {target}")
    assert not bad, "\n".join(bad)


def test_no_import_cycles_between_modules():
    graph: dict[str, set[str]] = {}
    for module, path in ALL_MODULES.items():
        deps = set()
        for target in _imports(module, path, top_level_only=True):
            while target and target not in ALL_MODULES:
                target = target.rpartition(".")[0]
            # a package's __init__ importing its own submodules is not a cycle hazard by itself
            if target and target != module and not module.startswith(target + "."):
                deps.add(target)
        graph[module] = deps
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep):] + [dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


@pytest.mark.parametrize("package", ["fusion_infer", "fusion_diffusers"])
def test_no_deferred_imports_of_own_modules(package):
    """A function-level import of a sibling module is how an import cycle hides; these packages
    have none (``fusion_train.cli`` defers imports on purpose, so ``--help`` stays fast)."""
    bad = []
    for module, path in _modules(package).items():
        top = _imports(module, path, top_level_only=True)
        for target in _imports(module, path, top_level_only=False) - top:
            if target.split(".")[0] in PACKAGE_DIRS:
                bad.append(f"{module} defers importing {target}")
    assert not bad, "\n".join(bad)


def test_fusion_infer_imports_alone():
    code = (
        "import sys, fusion_infer, fusion_infer.shrink\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('fusion_train', 'fusion_diffusers', 'diffusers')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_pyproject_lists_every_package():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    listed = set(config["tool"]["setuptools"]["packages"])
    on_disk = set()
    for pkg, base in PACKAGE_DIRS.items():
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base)
            on_disk.add(".".join([pkg, *rel.parts]))
    assert listed == on_disk
