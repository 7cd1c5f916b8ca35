"""Development support: where the database is (DSN resolution) and the embedded server."""
