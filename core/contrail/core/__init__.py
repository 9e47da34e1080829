"""What the API and the workers share, torch-free: the job record and its queue protocol
(`contrail.core.jobs`), task formats, prompts and demonstration pools (`contrail.core.tasks`),
object storage and the common settings. Neither side imports the other; both import this."""
