"""Running model-written code against tests in bubblewrap, treating it as hostile. It imports only pipeline.core."""
