"""netmgr's Prometheus metrics (the cluster part)."""

from __future__ import annotations

from prometheus_client import Gauge

from corral.natsio.cluster_service import active_gauge, reconcile_histogram

NETWORKS = Gauge("corral_netmgr_networks", "Networks stored")
SERVICES = Gauge("corral_netmgr_services", "Services stored")
ENDPOINTS = Gauge("corral_netmgr_endpoints", "Ready endpoint addresses over every Service")
SLICES = Gauge("corral_netmgr_network_slices", "Network slices stored (one per network and node)")
ACTIVE = active_gauge("netmgr")
# controller: "network" (slices and status) or "endpoints".
RECONCILE_SECONDS = reconcile_histogram("netmgr")
