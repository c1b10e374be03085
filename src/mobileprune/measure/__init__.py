"""Measurement: latency timing and the side-by-side benchmark."""
