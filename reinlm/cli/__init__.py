"""Command-line front end. Each sub-command is a module here with ``add_parser`` and ``run``."""
