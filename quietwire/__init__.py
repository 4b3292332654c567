"""The `quietwire` command line: analytics' commands plus the demo (`quietwire.cli`)."""
