"""Fixtures for the model tests."""
