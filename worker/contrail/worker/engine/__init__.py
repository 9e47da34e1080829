"""Decoding engines: the vLLM pair engine (production) and the torch reference engine (oracle)."""
