"""File names of an `ifp import-hf` directory (a light module: the CLI's parser reads it)."""

import os

IMPORT_FILE = "ifp_import.json"
PARAMS_DIR = "params"
TOKENIZER_FILE = "tokenizer.json"
KINDS = ("llm", "predictor")


def is_import_dir(path: str) -> bool:
    return bool(path) and os.path.isfile(os.path.join(path, IMPORT_FILE))
