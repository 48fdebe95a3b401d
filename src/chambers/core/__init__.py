"""The domain: sessions, turns, events, usage, keys. Talks only to ports (see ports.py)."""
