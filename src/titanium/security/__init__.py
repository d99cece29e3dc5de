"""Password hashing and token signing."""
