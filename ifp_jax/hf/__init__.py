"""Hugging Face interop: Llama checkpoints (safetensors + config.json); tokenizers are in vocab/.

    weights.py         config and tensor mapping, both directions; reading/writing safetensors
    import_layout.py   the file names of an import directory
    import_hf.py       what `ifp import-hf SRC --out DIR` does
    imported.py        import dirs as train.init_llm_from / init_predictor_from

Import the modules themselves (the package stays empty so the `ifp` parser loads fast).
"""
