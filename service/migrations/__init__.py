"""The database's schema history, as Alembic migrations: ``service.db.migrate`` applies what is pending."""
