"""poolctl: a pre-forked pool of warm OpenFn executors behind one Lightning connection."""

__version__ = "0.1.0"
