"""The problem-independent machinery: gradient flows, optimizers, training and the runner."""
