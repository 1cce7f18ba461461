"""The GGUF tensor types `ifp export --gguf-type` offers (a light module: the CLI parser reads
it; gguf_file/gguf_quant.py maps them to GGML types)."""

GGUF_TYPES = ("f32", "f16", "q8_0", "q4_0")
DEFAULT_GGUF_TYPE = "f16"
