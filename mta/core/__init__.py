"""The pure decisions: reply parsing, bounce classification, retry timing, throttling,
ramp-up, recipient status transitions, settling an outcome into state and events.

Free of I/O and of the clock: `now` is always an argument. May import `mta.model` and
itself only (no sockets, files, threads, databases or the clock); the layering test says so.
"""
