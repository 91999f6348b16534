"""Telling the lab what happened without it polling: one SNS topic per cluster, e-mailed."""
