"""Evaluation of the served ``digits`` model, per classifier version, on generated image sets."""
