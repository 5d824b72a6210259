"""TFDS builders of the project's datasets; importing this package registers them with TFDS.

BUILDERS maps each dataset name (as used in config.dataset, "name/config") to its builder class.
"""

from ecg_contrastive.data.builders.synthetic_ecg_ja import SyntheticEcgJa

BUILDERS = {"synthetic_ecg_ja": SyntheticEcgJa}
