"""SQL and blob storage backends chosen by URL (SQLite/PostgreSQL, directory/S3)."""
