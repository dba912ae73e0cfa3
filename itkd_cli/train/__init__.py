"""itkd_cli.train: the one training loop (teacher training and distillation), optimiser, checkpoints, DDP."""
