"""Store: the database. models (the tables) -> database (engines, sessions) -> schema (Alembic
migrations shipped in migrations/) ; locks (named locks in the database) and copy (moving an
install to another database)."""
