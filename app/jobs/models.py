"""Tables of the jobs feature (filled in by its implementation)."""
