"""Benchmarks: training-step speed against PyTorch, the step through the input pipeline, loss memory
by global batch size. Run `python -m ecg_contrastive.bench --help`; results go to BENCHMARKS.md."""
