"""SMTP pieces shared by the service's ingress, the sink and the simulated ISPs: the server
protocol (aiosmtpd with a chunked DATA reader), TLS contexts and certificates, Maildir files.

May import `mta.core`, `mta.model` and the config engine only; it knows nothing of the queue
or the simulation.
"""
