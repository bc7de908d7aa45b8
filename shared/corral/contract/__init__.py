"""The contract: every payload, record, subject, bucket and limit the pieces agree on.

Pure types and rules (msgspec Structs, names, the codec, JSON Schemas, quantities,
the time budget). It imports nothing of corral's outside this package and does no
I/O, so anything that speaks the protocol (a service, a client, a test) can use it.
"""
