"""GPU/CPU workers: task formats, prompts, decoding engines and the queue consumer."""
