"""Features: online per-entity features (faust), point-in-time snapshots, label join, offline store."""
