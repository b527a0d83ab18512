"""The web UI's run page and tabs."""
