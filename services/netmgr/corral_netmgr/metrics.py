"""netmgr's Prometheus metrics (the cluster part)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from corral.natsio.cluster_service import active_gauge, reconcile_histogram

NETWORKS = Gauge("corral_netmgr_networks", "Networks stored")
SERVICES = Gauge("corral_netmgr_services", "Services stored")
ENDPOINTS = Gauge("corral_netmgr_endpoints", "Ready endpoint addresses over every Service")
SLICES = Gauge("corral_netmgr_network_slices", "Network slices stored (one per network and node)")
ACTIVE = active_gauge("netmgr")
# controller: "network" (slices and status), "endpoints" or "drains".
RECONCILE_SECONDS = reconcile_histogram("netmgr")
# The drain controller (corral_netmgr.drains; docs/rollouts.md, "Graceful stops").
DRAINS_WRITTEN = Counter(
    "corral_netmgr_replica_drains_written_total",
    "ReplicaDrain records written: a replica going away has left every live node's rules",
)
DRAIN_SECONDS = Histogram(
    "corral_netmgr_replica_drain_seconds",
    "From a replica seen going away (Terminating, or its placement gone) to its "
    "ReplicaDrain written",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
