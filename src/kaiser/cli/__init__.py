"""The `kaiser` command line: typer commands over the API (docs/architecture.md)."""
