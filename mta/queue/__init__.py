"""The queue: the durable spool (SQLite, one writer thread, group commit) and the scheduler
that picks due recipients per site, admits them under the site's limits and hands them to
delivery; outcomes come back here and are settled by the pure decisions of `mta.core`.

May import `mta.core`, `mta.model`, `mta.clock`, `mta.config` (the sections it reads) and
`mta.delivery`; never a command.
"""
