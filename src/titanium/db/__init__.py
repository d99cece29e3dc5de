"""Storage: the one schema, the engine factory and the migrations."""
