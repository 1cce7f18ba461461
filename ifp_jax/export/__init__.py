"""Export of pruned models: per-prompt / per-task selection, gathering, HF / orbax / GGUF writers."""
