"""Core: the normalised particle table, its conventions and field names, image access."""
