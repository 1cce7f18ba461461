"""File names of an `ifp import-hf` directory (a light module: the CLI's parser reads it)."""

import os

IMPORT_FILE = "ifp_import.json"
PARAMS_DIR = "params"
TOKENIZER_FILE = "tokenizer.json"
KINDS = ("llm", "predictor")


def is_import_dir(path: str) -> bool:
    """A local or gs:// directory holding an import's marker (written last)."""
    if not path:
        return False
    if str(path).startswith("gs://"):
        from ifp_jax.storage import paths  # not at the top: the CLI parser imports this module
        return paths.isfile(paths.join(path, IMPORT_FILE))
    return os.path.isfile(os.path.join(path, IMPORT_FILE))
