"""The HTTP API of the ZeroUnlearn service (FastAPI). Never imports torch or the engine."""
