"""mobileprune: compress PyTorch networks so they run fast on phones and edge devices."""

__version__ = "0.1.0"
