"""Federated PatchCore anomaly detection for industrial visual inspection."""

__version__ = "0.1.0"
