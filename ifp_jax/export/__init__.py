"""Export of pruned models: selection per prompt / instruction / task, the gathered small
model, and its HF / orbax / GGUF writers."""
