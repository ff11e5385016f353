"""Survival outputs a clinician can read: Kaplan-Meier estimators, the survival curve at any time from a model's
per-bin hazards, its recalibration on a validation split, and the metrics survival practitioners report. Pure
tensor math (float64), no modules."""
