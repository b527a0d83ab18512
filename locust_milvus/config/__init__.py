"""Options, the checked Settings built from them, and secrets."""
