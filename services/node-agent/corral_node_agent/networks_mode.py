"""Whether this node's new replicas join corral networks (--networks; docs/networking.md).

- `on`: every replica joins its template's networks (none named: `default`); one whose
  Docker network netmgr has not made on this engine yet waits for it.
- `off`: replicas go on the engine's default bridge, as before networks existed.
- `auto` (the default): `on` once the cluster has networks, i.e. the `default` Network
  record exists in `corral_networks` (netmgr's cluster part makes it when it starts);
  until then `off`, with one warning. Once seen it stays `on` (`default` is never
  deleted). `corral up`, which runs netmgr, passes `on`.
"""

from __future__ import annotations

import enum
import logging

from corral.contract import names
from corral.contract.specs import DEFAULT_NETWORK
from corral.natsio.kv import Bucket
from corral_node_agent.runtime import RuntimeFailure

log = logging.getLogger(__name__)


class NetworksMode(enum.StrEnum):
    AUTO = "auto"
    ON = "on"
    OFF = "off"


class NetworksChoice:
    """Asked before every create (corral_node_agent.executor.Executor.uses_networks)."""

    def __init__(self, mode: NetworksMode, networks: Bucket | None, node: str) -> None:
        self.mode = mode
        self.networks = networks  # corral_networks; None: no store to ask (auto = off)
        self.node = node
        self._seen = False
        self._warned = False
        self.reads = 0  # records read, for tests

    async def __call__(self) -> bool:
        if self.mode == NetworksMode.ON:
            return True
        if self.mode == NetworksMode.OFF or self.networks is None:
            return False
        if self._seen:
            return True
        self.reads += 1
        try:
            entry = await self.networks.get(DEFAULT_NETWORK)
        except Exception as error:  # retried on the replica's back-off, never guessed
            raise RuntimeFailure(
                f"reading {names.NETWORKS_BUCKET}/{DEFAULT_NETWORK}: {error}"
            ) from None
        if entry is not None and entry.value is not None:
            self._seen = True
            log.info("the cluster has networks: new replicas of %s join them", self.node)
            return True
        if not self._warned:
            self._warned = True
            log.warning(
                "the cluster has no networks yet (netmgr has not run): replicas of %s go on "
                "the engine's default bridge; with netmgr, run the agent with --networks on",
                self.node,
            )
        return False
