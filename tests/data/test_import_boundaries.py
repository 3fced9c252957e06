"""Import boundaries, checked in a fresh interpreter (one subprocess: torch imports once).

1. ``fusion_infer.controls.mel_bands`` / ``control_features`` never import ``fusion_train``.
2. Without ``music21`` installed, ``fusion_train.data`` still imports, ``synthetic_data`` works,
   and building the reference data raises an ImportError naming ``pip install fusion-dit[data]``.
"""

import subprocess
import sys

CODE = """
import sys
import fusion_infer.controls.features, fusion_infer.controls.mel_bands
assert not any(m.startswith("fusion_train") for m in sys.modules), "fusion_infer imported fusion_train"

class BlockMusic21:
    def find_spec(self, name, path=None, target=None):
        if name == "music21" or name.startswith("music21."):
            raise ImportError("No module named 'music21'")

sys.meta_path.insert(0, BlockMusic21())
from fusion_train.data import ReferenceDataConfig, build_reference_data, synthetic_data
assert synthetic_data(2, frames=8).latents.shape == (2, 64, 8)
try:
    build_reference_data(ReferenceDataConfig(n_pieces=2), cache_dir=sys.argv[1], progress=False)
except ImportError as exc:
    assert "pip install fusion-dit[data]" in str(exc), exc
else:
    raise AssertionError("building without music21 did not raise ImportError")
"""


def test_import_boundaries(tmp_path):
    subprocess.run([sys.executable, "-c", CODE, str(tmp_path)], check=True)
