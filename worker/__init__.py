"""The re-encryption worker: a Celery task that moves one slice forward one batch at a time."""
