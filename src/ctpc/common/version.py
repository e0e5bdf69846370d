"""The package version, in a module of its own so that anything may import it without
importing the package (and everything the package imports)."""
__version__ = "0.2.0"
