"""Model access: the backend protocol, the OpenAI-compatible and transformers backends, Ray, reward scorers and the
embedded default models. It imports only pipeline.core."""
