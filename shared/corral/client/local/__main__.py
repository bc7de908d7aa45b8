"""`python -m corral.client.local up|down`: what a detached `corral up -d` runs."""

from corral.client.cli.local_commands import local_cli

local_cli()
