"""The agent loop on pydantic-ai: provider resolution, built-in tools, event translation."""
