"""Learning: training samples and augmentation, the training loop, fine-tuning runs and the versioned model store."""
