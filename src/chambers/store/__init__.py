"""The Store adapter: SQLAlchemy (async) over SQLite by default or PostgreSQL."""
