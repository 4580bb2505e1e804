"""Configuration in one place: the typed config engine (TOML + `MTA_*` env + flags), the MTA's
own config, and the loaders of the data files (MX rules, ramp-up, retry schedule).

May import `mta.core` and `mta.model` (the pure types the data files fill); never a stage or
a command.
"""
