"""Two-stage search: re-rankers that judge (query, candidate) pairs, and score calibration."""
