"""attune_pg: a durable workflow engine that needs nothing but PostgreSQL."""

__version__ = "0.1.0"
