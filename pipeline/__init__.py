"""textbook-pipeline engine: config, Ray runner, IO, ledger, dataset cards and the CLI."""

__version__ = "0.1.0"
