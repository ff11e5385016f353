"""Training and scoring: the trainer, its workflows, metrics, baselines, paired statistics, figures, leakage guard."""
