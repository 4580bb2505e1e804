"""Configuration in one place: the typed config engine (TOML + `MTA_*` env + flags), the MTA's
own config, and the loaders of the data files (MX rules, ramp-up, retry schedule).
The stages take their sections of the MTA's config as they are (`Feedback(spool,
config.feedback)`); only values derived elsewhere (the clock, the node's name) come beside them.

May import `mta.core` and `mta.model` (the pure types the data files fill); never a stage or
a command.
"""
