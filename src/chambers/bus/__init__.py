"""EventBus adapters: in-process (default) and Redis Streams (scale-out)."""
