"""HTTP adapters: FastAPI routers, SSE encoding, auth dependencies, the error envelope."""
