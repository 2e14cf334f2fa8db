"""The durable store-and-forward spool (SQLite) and its settings."""
