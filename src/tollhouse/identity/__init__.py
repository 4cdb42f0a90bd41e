"""Identity: virtual keys (stored hashed), teams, users, and the admin principal."""
