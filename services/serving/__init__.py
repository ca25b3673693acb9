"""Serving: HTTP predictions with request-time features, hot swap, shadow and canary, the prediction log."""
