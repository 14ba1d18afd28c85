"""Encoders and the batch-encode pipeline (embedding views; see the embedding-views issue)."""
