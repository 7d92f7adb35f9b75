"""Serving defaults, in a module without heavy imports, so ``dahp serve --help`` can show them
without loading FastAPI or torch."""

MAX_UPLOAD_BYTES = 10 * 2**20
"""Larger uploads get HTTP 413."""

MAX_BATCH = 32
"""Most queries encoded in one forward pass."""

MAX_WAIT_MS = 0.0
"""Longest a query waits for others still being decoded to join its batch (a lone query never waits).
0: under load batches form anyway, from the queries that arrive while one is encoded, and waiting
for more cost 1.14-1.28x fewer requests/s with 16 clients (benchmarks/server_latency.py, docs/search.md)."""

MAX_QUEUE = 128
"""Most search requests in the server at once (decoding, waiting or encoding); more get HTTP 503."""

RELOAD_SECONDS = 1.0
"""How often the server looks for a newer committed index generation (0: never)."""

RETRY_AFTER_SECONDS = 1
"""What a 503 tells the client to wait: a full queue drains within a few batches."""
