"""Typed models of everything that crosses a boundary. Imports nothing of ours."""
