"""`python -m corral.client.local up|down`: what a detached `corral up -d` runs.

The supervisor talks only to the nats-server it starts (nats://), so its process
leaves nats-py's WebSocket transport out (corral.natsio.lean) before anything
imports nats.
"""

from corral.natsio.lean import leave_out_websocket_transport

leave_out_websocket_transport()

from corral.client.cli.local_commands import local_cli  # noqa: E402

local_cli()
