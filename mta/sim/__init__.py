"""The simulated internet (`mta sim`): ISP personas, a stub DNS, deterministic scenarios.

Personas are SMTP servers on their own loopback addresses (127.0.0.x), all on
one port, named in a stub DNS zone the MTA's real resolver queries. They
answer like Gmail, Yahoo, Microsoft or a generic ISP (their reply texts,
per-IP token buckets, mailbox tables, greylisting, latency, seeded faults,
reputation memory), follow scripts written in local parts
(`alice+452-452-250@isp.test`, see `mta.sim.scripts`), keep what they accept
(one SQLite file by default, or a Maildir per persona), and send DSNs,
auto-replies and complaints back through the MTA.

Modules: `config` (isps.toml), `scripts` (local-part grammar, seeded chance),
`rules` (buckets, greylist, reputation, mailbox tables), `dns_server`,
`persona` (with `reply_text`, its replies' texts, and `persona_server`, how it is served),
`artefacts` (RFC 3464 / 3834 / 5965 and the outbox), `store` (the SQLite and Maildir stores)
and `store_reader` (what they hold, read back), `http` (the /sim/v1 API),
`simulation` (the running whole); the command is `mta.cli.sim`.

May import `mta.model`, `mta.clock`, `mta.sqlite`, `mta.smtp` and the config engine; never
the service's stages (it talks to the MTA over the network only) nor a command.
"""
