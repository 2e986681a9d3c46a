"""Compiled steps: what runs a batch through the model for a method, its rows and targets."""
