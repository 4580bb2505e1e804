"""mta-sim: an Enhanced-MTA simulator (relay, simulated internet, feedback events)."""

__version__ = "0.1.0"
