"""Hugging Face interop: Llama checkpoints (safetensors + config.json) and tokenizer.json.

    weights.py     config and tensor mapping, both directions; reading/writing safetensors
    tokenizer.py   HFTokenizerVocabulary (a seqio Vocabulary over tokenizer.json)
    import_cli.py  `ifp import-hf SRC --out DIR`
    imported.py    import dirs as train.init_llm_from / init_predictor_from
"""

from ifp_jax.hf.weights import (hf_config_from_model_config, hf_from_params,
                                model_config_from_hf, params_from_hf, read_hf_checkpoint,
                                write_hf_checkpoint)

__all__ = ["hf_config_from_model_config", "hf_from_params", "model_config_from_hf",
           "params_from_hf", "read_hf_checkpoint", "write_hf_checkpoint"]
