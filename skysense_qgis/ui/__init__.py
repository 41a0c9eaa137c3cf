"""Dock widget and its sections."""
