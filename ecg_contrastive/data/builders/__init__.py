"""TFDS builders of the project's datasets; importing this package registers them with TFDS.

BUILDERS maps each dataset name (as used in config.dataset, "name/config") to its builder class.
The real-data builders (LocalEcgBuilder subclasses) read a folder on local disk: `source_dir`.
"""

from ecg_contrastive.data.builders.ecg_manifest import EcgManifest
from ecg_contrastive.data.builders.mimic_iv_ecg import MimicIvEcg
from ecg_contrastive.data.builders.ptbxl import Ptbxl
from ecg_contrastive.data.builders.synthetic_ecg_ja import SyntheticEcgJa

BUILDERS = {
  "synthetic_ecg_ja": SyntheticEcgJa,
  "ptbxl": Ptbxl,
  "mimic_iv_ecg": MimicIvEcg,
  "ecg_manifest": EcgManifest,
}
