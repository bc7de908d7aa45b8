"""corral's shared code: the one home of every type, subject and bucket name,
the NATS/KV client, configuration, metrics helpers and the client library."""

__version__ = "0.1.0"
