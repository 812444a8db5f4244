"""Typed models of everything that crosses a boundary. Imports nothing of ours."""

VERSION = "0.1.0"  # pyproject.toml and the manifest's image tag must say the same (a test checks)
