"""bptt-cli: reproduce "Stabilizing Backpropagation Through Time to Learn Complex Physics"."""

__version__ = "0.1.0"
