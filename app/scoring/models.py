"""Tables of the scoring feature (filled in by its implementation)."""
