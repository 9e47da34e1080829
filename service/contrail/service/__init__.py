"""The API service: FastAPI app, Redis queue producer, object-storage access."""
