"""Train stage: the GAN trainer, the one training loop, and its in-process and Ray Train drivers."""
