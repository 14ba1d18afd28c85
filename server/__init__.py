"""The HTTP API: a FastAPI app over the contextkit SDK (``create_app``)."""
