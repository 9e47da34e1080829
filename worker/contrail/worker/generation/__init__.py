"""From task items to rationale records: prompt planning and decoding through an engine
(`pipeline`), per-item errors, the dataset writer (JSONL and Parquet), and the offline generator
that runs it all with no queue (``contrail generate``)."""
