"""The `mta` command: one module per subcommand, `main` for the parser, `common` for what all share.

Commands wire the service's stages together and talk to the user; no stage of the service
imports a command. May import anything in `mta`.
"""
