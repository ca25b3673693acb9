"""Trainer: online (river) and batch (scikit-learn) training, metric gates, the model registry."""
