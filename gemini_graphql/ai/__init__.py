"""The language model behind the assistant."""
