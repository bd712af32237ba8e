"""Training: fine-tuning a classifier (the engine, its resume state and epoch snapshots) and the
synthetic world's contrastive pretraining."""
