"""What an export records about itself: where it came from, what it keeps, a content hash."""

from __future__ import annotations

import hashlib

import jax
import numpy as np


def content_hash(params: dict) -> str:
    """sha256 over every parameter's path, shape and f32 bytes (order-independent of dict
    insertion): equal hashes mean identical small models."""
    h = hashlib.sha256()
    flat = sorted(jax.tree_util.tree_flatten_with_path(params)[0],
                  key=lambda kv: jax.tree_util.keystr(kv[0]))
    for path, leaf in flat:
        arr = np.ascontiguousarray(np.asarray(leaf, np.float32))
        h.update(jax.tree_util.keystr(path).encode())
        h.update(str(arr.shape).encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def export_metadata(*, source_workdir: str, source_step: int, selection, text: str,
                    text_kind: str, task: str | None, params_hash: str) -> dict:
    """JSON-able metadata stored with every format (HF: ifp_export.json; GGUF: ifp.* keys)."""
    return {"source_workdir": source_workdir, "source_step": int(source_step),
            "selected_by": text_kind, "text": text, "task": task or "",
            "pruning_mode": selection.mode, "eval_mask": selection.eval_mask,
            "keep_k": int(selection.keep_idx.shape[1]),
            "kept_units": [[int(i) for i in row] for row in selection.keep_idx],
            "content_hash": params_hash}
