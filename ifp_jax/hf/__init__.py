"""Hugging Face interop: Llama checkpoints (safetensors + config.json) and tokenizer.json.

    weights.py         config and tensor mapping, both directions; reading/writing safetensors
    tokenizer_file.py  a tokenizer.json and its special ids (no TensorFlow)
    tokenizer.py       HFTokenizerVocabulary (a seqio Vocabulary over tokenizer.json)
    import_layout.py   the file names of an import directory
    import_cli.py      `ifp import-hf SRC --out DIR`
    imported.py        import dirs as train.init_llm_from / init_predictor_from

Import the modules themselves (the package stays empty so the `ifp` parser loads fast).
"""
