"""A worker process: an engine behind a gRPC server, in a prefill, decode or mixed role."""
