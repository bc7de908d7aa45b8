"""Running corral on one machine: `corral up` and `corral down`.

`corral up` starts a supervisor: an embedded nats-server with JetStream (its
store under the data dir, so state survives a restart), then each service as a
separate process, restarting any that dies with back-off. `corral up -d` runs
the same supervisor detached; `corral down` stops it.

    layout.py       where things live under the data dir
    plan.py         which processes `corral up` runs, with their flags and ports
    nats_server.py  finding and checking the embedded nats-server
    child.py        one supervised process: start, restart with back-off, stop
    health.py       waiting for a service's /healthz
    state_file.py   the supervisor's pid and its children, as JSON on disk
    processes.py    pids: alive or not, stopping them (used by `corral down`)
    supervisor.py   the whole: start in order, wait healthy, stop in order
    detach.py       `up -d` (start the supervisor detached) and `down`
"""
