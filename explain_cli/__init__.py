"""explain: show why an image classifier decided what it decided.

Importing this package is cheap on purpose: TensorFlow loads only when a command
that needs a model runs, so `explain --help` stays instant.
"""

__version__ = "0.1.0"
