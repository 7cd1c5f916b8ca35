"""Store: the only code that sends SQL (pool, retries, SQLSTATE translation, named statements,
migrations, group commit)."""
