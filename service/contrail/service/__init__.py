"""The API service: the FastAPI app (`app`, `routers/`), authentication and limits, uploads
(`ingest`), job creation and resubmission, metrics and the dataset viewer. The job protocol,
queue scripts and object storage it uses are `contrail.core`'s."""
