"""The package version, in a module of its own so that any layer can read it without importing
the package's public API (which sits on top of every layer)."""

__version__ = "0.1.0"
