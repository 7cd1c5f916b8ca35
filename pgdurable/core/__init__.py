"""Core: pure building blocks (errors, serialisation, cron, definitions). No psycopg, no I/O."""
