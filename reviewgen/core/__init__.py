"""Core: config, tokenizer, models, sampling, losses, checkpoints.

Plain PyTorch; imports no Ray and nothing above it."""
