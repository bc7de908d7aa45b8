"""`python -m corral.local up|down`: what a detached `corral up -d` runs."""

from corral.cli.local_commands import local_cli

local_cli()
