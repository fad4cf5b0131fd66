"""Rendering results for the terminal: one function or class per result type."""
