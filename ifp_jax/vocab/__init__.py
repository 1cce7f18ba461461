"""Every tokenizer the project reads or writes, in one place.

    seqio_vocab.py     `get_vocabulary(spec)`: the seqio Vocabulary the data pipeline uses
                       ('byte', a SentencePiece .model, or a tokenizer.json)
    hf_seqio.py        HFTokenizerVocabulary: a seqio Vocabulary over a tokenizer.json
    tokenizer_json.py  HFTokenizerFile: a tokenizer.json and its special ids (no TensorFlow)
    light.py           LightVocabulary: the same ids as seqio_vocab without TensorFlow (serving)
    export_files.py    the tokenizer files written beside an exported Hugging Face model

Import the modules themselves (the package stays empty so the `ifp` parser loads fast).
"""
