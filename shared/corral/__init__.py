"""corral's shared package, in three layers (docs/architecture.md):

    corral.contract  the types, names and rules every piece agrees on (no I/O)
    corral.natsio    NATS: KV buckets, the bus, the service runtime, the HTTP endpoint
    corral.client    the client library, the `corral` CLI and `corral up`

A service imports the first two only. This module stays tiny: importing it must
not pull in any layer.
"""

__version__ = "0.1.0"
