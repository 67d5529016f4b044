"""Serving trained models over HTTP: an OpenAI-compatible API, a playground page, continuous batching."""
