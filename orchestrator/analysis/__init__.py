"""Statistics, reports and exports computed from a run's journal (read-only)."""
