"""The GPT model, its configuration and the attention backends."""
