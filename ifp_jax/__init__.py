"""ifp_jax: instruction-following pruning of LLMs in JAX (docs/architecture.md)."""

from ifp_jax.storage import gcs as _gcs

_gcs.configure_environment()  # before any Cloud Storage client is imported (storage/gcs.py)
