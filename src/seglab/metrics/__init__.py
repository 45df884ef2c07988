"""Segmentation metrics (torchmetrics) and evaluators."""
