"""reviewgen: distributed conditional review GAN on Ray."""

__version__ = "0.1.0"
