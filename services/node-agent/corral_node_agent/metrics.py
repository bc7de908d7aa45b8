"""The agent's Prometheus metrics (module-level: shared by every agent in a process)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CONTAINER_STARTS = Counter(
    "corral_container_starts_total",
    "Containers started by the node agent (first starts and restarts)",
)
CONTAINER_RESTARTS = Counter(
    "corral_container_restarts_total", "Containers restarted after they exited or vanished"
)
REPLICAS_RUNNING = Gauge("corral_replicas_running", "Placed replicas whose container runs")
PLACEMENT_WATCHES = Counter(
    "corral_placement_watches_total",
    "Times an agent's placements became current: a new watch (how=new), or a watch kept "
    "through an isolation and proven by the acks (kept_by_acks) or an echo (kept_by_echo)",
    ["how"],
)
IMAGE_PULLS = Counter("corral_image_pulls_total", "Image pulls by result", ["result"])
RECONCILE_SECONDS = Histogram(
    "corral_agent_reconcile_seconds",
    "Duration of one reconcile pass of the node agent",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
MODE_ENTRIES = Counter(
    "corral_agent_mode_entries_total",
    "Times an agent entered a mode of its safety state machine (Isolated: not proven "
    "heard for isolated_after)",
    ["mode"],
)
HEARTBEATS_PROVEN_LATE = Counter(
    "corral_agent_heartbeats_proven_late_total",
    "Heartbeats whose acks came after the agent's wait (half a heartbeat) but within "
    "2 s more: the agent counts itself heard from that beat's sending all the same",
)
MODE_EVENTS_HELD = Counter(
    "corral_agent_mode_events_held_total",
    "Mode changes not reported as Events (a burst of 6 per agent, then one per 30 s: "
    "mode_events.py); the agent's log has every one",
)
