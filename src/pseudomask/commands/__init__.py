"""Subcommands of the `pseudomask` CLI; each module defines `register(subparsers)`."""
