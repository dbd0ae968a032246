"""Shared test code: traffic and fixtures, training splits, a CloudEvents receiver."""
