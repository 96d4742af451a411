"""ML Studio: chat, images, speech and fine-tuning on one GPU, under one model manager."""

__version__ = "0.1.0"
