"""The NATS layer and the service runtime.

KV buckets with compare-and-set (`kv`), streams, events and request/durable-spec
serving (`bus`), what a spec stream has applied (`spec_progress`), the cluster's
identity (`cluster`), where the NATS URL comes from (`config`), and what every
service process shares (`service`, `http_endpoint`). It imports the contract only.
"""
