"""The client side: what people and scripts use, never a service.

`api` (CorralClient, the client library), `cli` (the `corral` command) and `local`
(`corral up` / `corral down`: the local supervisor). It may import the contract and
the NATS layer; no service imports it.
"""
