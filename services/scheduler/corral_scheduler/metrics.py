"""The scheduler's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REPLICAS_DESIRED = Gauge(
    "corral_replicas_desired", "Replicas a Deployment asks for", ["deployment"]
)
REPLICAS_READY = Gauge("corral_replicas_ready", "Replicas placed and Running", ["deployment"])
REPLICAS_PENDING = Gauge("corral_replicas_pending", "Replicas that fit on no node", ["deployment"])
SCHEDULING_LATENCY = Histogram(
    "corral_scheduling_latency_seconds",
    "From a Deployment change seen to its plan committed",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
DECIDE_SECONDS = Histogram(
    "corral_scheduler_decide_seconds",
    "Time spent in the pure deciding step",
    buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1),
)
PLANS = Counter("corral_plans_total", "Plans committed (non-empty)")
PLACEMENTS = Counter("corral_placements_total", "Replicas placed on a node")
# reason: a bounded set (deployment deleted, scaled down, replaced by a new template,
# node lost, node released, node engine down); never a node's or a Deployment's name.
STOPS = Counter("corral_stops_total", "Replicas stopped", ["reason"])
CONFLICTS = Counter("corral_plan_conflicts_total", "Writes skipped on a revision conflict")
NODES_READY = Gauge("corral_nodes_ready", "Nodes that are Ready")
NODES = Gauge("corral_nodes", "Nodes registered")
VIEW_FRESH = Gauge(
    "corral_scheduler_view_fresh",
    "1 while the scheduler's echoes come back through every watch liveness depends on "
    "(nodes, placements, releases): its view of the cluster is current",
)
NODES_RELEASED = Gauge(
    "corral_nodes_released", "Nodes an operator released whose replicas are still being moved"
)
ECHOES_COLLECTED = Counter(
    "corral_echo_keys_collected_total", "Echo keys of gone owners deleted by the scheduler"
)
HISTORY_ERRORS = Counter(
    "corral_history_errors_total",
    "Deployment history writes that failed (retried; scheduling goes on)",
)
ROLLBACKS = Counter(
    "corral_auto_rollbacks_total",
    "Automatic rollbacks written (reason: ProgressDeadlineExceeded or CrashLoop)",
    ["reason"],
)
ROLLBACK_SECONDS = Histogram(
    "corral_auto_rollback_seconds",
    "From an automatic rollback's decision to the rollout of the template it put back "
    "completing (every replica updated and available)",
    buckets=(0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600),
)
