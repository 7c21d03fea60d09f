"""Evaluation reports (predictions, figures, markdown, plots), metrics, the held-out measurement."""
