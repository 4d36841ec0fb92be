"""The Label Studio ML backend: HTTP app, LS JSON <-> arrays, supports, webhooks, RQ jobs."""
