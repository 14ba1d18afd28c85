"""Encoders and the batch-encode pipeline (embedding views; see the embedding-views issue).

A leaf layer: it imports numpy and pyarrow, and lazily (on first use) sentence-transformers,
torch or litellm; never the contextkit core, never ``contextkit.stores``. The core composes it
with the vector store::

    from contextkit.embeddings import Chunker, get_encoder, plan_encode
    from contextkit.stores.vector import LanceVectorStore

    encoder = get_encoder("minilm", repo_models)               # built once per process
    chunker = Chunker.from_config({"by": "tokens", "size": 200, "overlap": 20}, encoder)
    store = LanceVectorStore(".contextkit/vectors")
    with plan_encode(source_batches, encoder=encoder, key_columns=["doc_id"],
                     text_column="body", metadata_columns=["category", "price"],
                     chunker=chunker, existing=store.existing_hashes(table),
                     fetch_vectors=lambda ids: store.fetch_vectors(table, ids)) as plan:
        store.apply_changes(table, plan.batches(), plan.delete_ids,
                            dim=encoder.dimension, key_columns=["doc_id"])

Modules: ``encoders`` (the ``Encoder`` protocol, sentence-transformers / litellm / hash encoders,
``encode_query``), ``models`` (``build_encoder``, ``get_encoder`` from a repo's ``models:``),
``onnx_encoder`` (the same local models on ONNX Runtime), ``onnx_export`` (exporting and caching
their ONNX files), ``query_cache`` (the LRU of query vectors), ``chunking`` (character and token
windows), ``pipeline`` (``plan_encode`` -> ``EncodePlan``), ``errors`` (every error raised here).
"""

from .chunking import Chunk, Chunker, whitespace_spans, whole_text
from .encoders import (
    DEFAULT_MODEL,
    DEFAULT_MODELS,
    Encoder,
    HashEncoder,
    LiteLLMEncoder,
    SentenceTransformerEncoder,
    encode_query,
    l2_normalize,
    packaged_model_path,
    vectors_id,
)
from .errors import (
    ChunkingError,
    EmbeddingError,
    EncoderConfigError,
    EncoderFailure,
    PipelineInputError,
)
from .models import build_encoder, get_encoder, model_configs
from .onnx_encoder import OnnxEncoder
from .onnx_export import OnnxArtifact, default_cache_dir, export_onnx
from .pipeline import (
    SYSTEM_COLUMNS,
    EncodePlan,
    EncodeProgress,
    EncodeStats,
    chunk_id,
    content_hash,
    encode_pending,
    plan_encode,
    rich_progress,
)
from .query_cache import QueryCache

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_MODELS",
    "SYSTEM_COLUMNS",
    "Chunk",
    "Chunker",
    "ChunkingError",
    "EmbeddingError",
    "EncodePlan",
    "EncodeProgress",
    "EncodeStats",
    "Encoder",
    "EncoderConfigError",
    "EncoderFailure",
    "HashEncoder",
    "LiteLLMEncoder",
    "OnnxArtifact",
    "OnnxEncoder",
    "PipelineInputError",
    "QueryCache",
    "SentenceTransformerEncoder",
    "build_encoder",
    "chunk_id",
    "content_hash",
    "default_cache_dir",
    "encode_pending",
    "encode_query",
    "export_onnx",
    "get_encoder",
    "l2_normalize",
    "model_configs",
    "packaged_model_path",
    "plan_encode",
    "rich_progress",
    "vectors_id",
    "whitespace_spans",
    "whole_text",
]
