"""Training and fine-tuning: the trainer, the compensation method, finetune."""
