"""netmgr's Prometheus metrics (the cluster part)."""

from __future__ import annotations

from prometheus_client import Gauge, Histogram

NETWORKS = Gauge("corral_netmgr_networks", "Networks stored")
SERVICES = Gauge("corral_netmgr_services", "Services stored")
ENDPOINTS = Gauge("corral_netmgr_endpoints", "Ready endpoint addresses over every Service")
SLICES = Gauge("corral_netmgr_network_slices", "Network slices stored (one per network and node)")
ACTIVE = Gauge(
    "corral_netmgr_active", "1 while this netmgr holds the lease and runs the cluster part"
)
# controller: "network" (slices and status) or "endpoints".
RECONCILE_SECONDS = Histogram(
    "corral_netmgr_reconcile_seconds",
    "Time one reconcile of one key took",
    ["controller"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
