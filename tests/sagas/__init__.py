"""Sagas shared by several test modules."""
