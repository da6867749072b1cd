"""The sweep: its durable state, its fleet-wide rate limits, and how one batch is processed."""
