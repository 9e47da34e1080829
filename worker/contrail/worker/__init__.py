"""The GPU/CPU side, in four rooms (import-linter keeps the layers, top to bottom):

- `consumer/`: the queue consumer. One loop (`consumer.loop`) in two roles: decode workers read a
  model's shard stream and decode (`shards`), finalizers read the finalize stream and merge
  (`finalize`); around it the heartbeat's health and watchdog, poison shards and redeliveries
  (`poison`, `resilience`).
- `generation/`: prompts to records (`pipeline`), per-item errors, the dataset writer, and the
  offline generator (`offline`, ``contrail generate``) that runs the pipeline with no queue.
- `engine/`: the decoding engines (vLLM pair engine, torch reference, simulated) and the pair
  logits processor. They know nothing of queues or storage.
- `models/`: model preparation (the prepared-model cache, the tiny test model, the SmolLM2
  conversion, Hugging Face Hub ids).

Task formats, prompts, the job protocol and storage are shared with the API in `contrail.core`;
evaluation and students are `contrail.distill`."""
