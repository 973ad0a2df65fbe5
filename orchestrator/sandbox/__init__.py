"""Sandboxes that run one untrusted candidate each."""
