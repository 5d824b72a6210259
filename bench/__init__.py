"""Benchmarks: training-step speed against PyTorch, the step through the input pipeline, loss memory
by global batch size. Run `python -m bench --help`; results go to BENCHMARKS.md."""
