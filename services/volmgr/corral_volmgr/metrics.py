"""volmgr's Prometheus metrics (the cluster part)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from corral.natsio.cluster_service import active_gauge, reconcile_histogram

CLAIMS = Gauge("corral_volmgr_claims", "PersistentVolumeClaims by phase", ["phase"])
VOLUMES = Gauge("corral_volmgr_volumes", "PersistentVolumes by phase", ["phase"])
BINDS = Counter("corral_volmgr_binds_total", "Claims bound to a volume")
BIND_SECONDS = Histogram(
    "corral_volmgr_bind_seconds",
    "Time from a claim's creation to its binding",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
ACTIVE = active_gauge("volmgr")
# controller: "claim" (binding, provisioning) or "volume" (status, reclaim).
RECONCILE_SECONDS = reconcile_histogram("volmgr")
