"""benchmarks/gpu_suite.py runs every section end to end on a CPU with --dry-run (tiny sizes)."""

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.mark.slow
def test_gpu_suite_dry_run_runs_every_section(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    sys.modules.pop("gpu_suite", None)
    import gpu_suite

    data = gpu_suite.main(["--dry-run", "--out", str(tmp_path)])
    assert set(data["sections"]) == set(gpu_suite.SECTIONS)
    errors = {k: v["error"] for k, v in data["sections"].items() if "error" in v}
    assert not errors, errors
    assert data["sections"]["dit_cache"]["result"]["bit_equal"]
    saved = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert saved["dry_run"] and (tmp_path / "gpu_suite.md").read_text().startswith("# GPU suite on cpu")


def test_gpu_suite_refuses_to_run_without_cuda_unless_dry_run(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    sys.modules.pop("gpu_suite", None)
    import gpu_suite
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="--dry-run"):
        gpu_suite.main([])
