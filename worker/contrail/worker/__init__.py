"""The GPU/CPU side: decode workers (the queue consumer and the decoding engines: `loop`,
`shards`, `engine/`), finalizers (`finalize`, the same loop with no engine), offline generation
(`offline`) and model preparation (`models`, `hub`). Task formats, prompts, the job protocol and
storage are shared with the API in `contrail.core`; evaluation and students are
`contrail.distill`."""
