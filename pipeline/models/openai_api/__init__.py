"""The openai backend, for any OpenAI-compatible server: the backend object (backend.py), realtime calls
(realtime.py), the Batch API (batch.py) and reading what the server answers (responses.py)."""
