"""ecg_contrastive: contrastive ECG-report pre-training in JAX/Flax (LiT with a locked text tower).

Reimplements arXiv 2504.09302 for scale: a ResNet1d ECG tower trained with a symmetric
InfoNCE loss against frozen Japanese language-model embeddings of ECG reports, then
zero-shot classification among 98 Japanese labels.
"""

__version__ = "0.1.0"
