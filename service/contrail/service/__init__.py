"""The API service: the FastAPI app factory (`app.create_app`) and its routers (`routers/`: HTTP
mapping only), authentication and limits (`auth`, `deps`, `limits`), uploads (`uploads`,
validated record by record in `ingest`, bounded by `upload_slots`), job creation and idempotency
(`creation`), resubmission (`resubmit`), what a job produced (`outputs`), metrics and the
dataset viewer (`viewer/`). Its CLI plugin (`cli`) adds `contrail serve api` and `contrail up`,
the whole stack on one machine (`local_stack`). The job protocol, queue scripts, object storage
and the process supervisor it uses are `contrail.core`'s."""
