"""Tables of the trajectories feature (filled in by its implementation)."""
