"""Tables of the files feature (filled in by its implementation)."""
