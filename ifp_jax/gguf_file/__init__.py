"""llama.cpp's GGUF file format: write (with quantisation), read and dequantise (used by export
and by the GGUF import; it imports neither)."""
