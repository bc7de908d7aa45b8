"""Putting the node part's rules in force (docs/networking.md, "Services").

Both tables are written by one `iptables-restore --noflush` call (the node's chains are
declared, which empties them, and filled; chains of other owners are never named).
The jumps from the built-in chains are checked with `iptables -C` and inserted at
position 1 when missing, or moved there (deleted by rule text and inserted, in one
restore transaction: never by position number) when a rule that is not a jump to a
corral chain has come before them (Docker puts its own jumps first when it rewrites its
chains); jumps of other corral nodes ahead of ours are fine, so two node parts on one
host never fight.

`Iptables(prefix)` does it for one node; `binary` names the tools (tests run them in a
network namespace of their own).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence

from corral_netmgr.node import host
from corral_netmgr.node.rules import (
    TABLES,
    Jump,
    chains_in,
    in_place,
    jumps,
    move_first,
    removal,
    rules_in,
)

log = logging.getLogger(__name__)

CONNTRACK_MISSING = (
    "conntrack is not installed: stale UDP flows of a Service whose "
    "endpoints changed are not removed (install Debian's conntrack)"
)


class Iptables:
    def __init__(self, prefix: str, *, wrapper: Sequence[str] = ()) -> None:
        """`wrapper`: a command the tools run under (e.g. `ip netns exec NAME`)."""
        self.prefix = prefix
        self.wrapper = list(wrapper)
        self._conntrack_warned = False

    def _argv(self, *argv: str) -> list[str]:
        return [*self.wrapper, *argv]

    async def save(self) -> str:
        """`iptables-save` of the tables corral writes."""
        parts = []
        for table in TABLES:
            ran = await host.run(self._argv("iptables-save", "-t", table))
            parts.append(ran.stdout)
        return "".join(parts)

    async def chains(self) -> dict[str, set[str]]:
        return chains_in(await self.save())

    async def restore(self, tables: Mapping[str, str]) -> None:
        """Write the tables' texts in one `iptables-restore --noflush` call."""
        text = "".join(tables[table] for table in TABLES if table in tables)
        if text:
            await host.run(self._argv("iptables-restore", "--noflush", "--wait"), text)

    async def has_chain(self, table: str, chain: str) -> bool:
        ran = await host.run(self._argv("iptables", "-w", "-t", table, "-S", chain), check=False)
        return ran.code == 0

    async def jumps(self) -> list[Jump]:
        return jumps(self.prefix, docker_user=await self.has_chain("filter", "DOCKER-USER"))

    async def ensure_jump(self, jump: Jump) -> bool:
        """Make `jump` present (and first, as far as non-corral rules go); True when it
        had to be added or moved."""
        base = ["iptables", "-w", "-t", jump.table]
        check = await host.run(self._argv(*base, "-C", jump.chain, *jump.spec), check=False)
        if check.code == 0:
            if not jump.first:
                return False
            listed = await self._rules(jump)
            if in_place(jump, listed):
                return False
            # Delete by rule text and insert first in one restore transaction: never by
            # position (another owner inserting meanwhile would shift the numbers).
            mine = f"-A {jump.chain} {' '.join(jump.spec)}"
            copies = sum(rule == mine for rule in listed)
            await host.run(
                self._argv("iptables-restore", "--noflush", "--wait"),
                move_first(jump, max(copies, 1)),
            )
            log.info("moved the jump %s -> %s (%s) first", jump.chain, jump.target, jump.table)
            return True
        if jump.first:
            await host.run(self._argv(*base, "-I", jump.chain, "1", *jump.spec))
        else:
            await host.run(self._argv(*base, "-A", jump.chain, *jump.spec))
        log.info("added the jump %s -> %s (%s)", jump.chain, jump.target, jump.table)
        return True

    async def _rules(self, jump: Jump) -> list[str]:
        ran = await host.run(self._argv("iptables", "-w", "-t", jump.table, "-S", jump.chain))
        return [line for line in ran.stdout.splitlines() if line.startswith("-A ")]

    async def apply(self, tables: Mapping[str, str], saved: str | None = None) -> int:
        """Restore the tables, then make sure of every jump; how many jumps were added or
        moved (Docker rewrote its chains, or this is the first time). `saved`: this
        node's `save()` just before (its own chains are all `tables` changes): jumps it
        shows in place are not checked again, one process per table instead of two per
        jump."""
        await self.restore(tables)
        if saved is None:
            wanted = await self.jumps()
            seen: dict[tuple[str, str], list[str]] = {}
        else:
            docker_user = "DOCKER-USER" in chains_in(saved).get("filter", set())
            wanted = jumps(self.prefix, docker_user=docker_user)
            seen = rules_in(saved)
        changed = 0
        for jump in wanted:
            if saved is not None and in_place(jump, seen.get((jump.table, jump.chain), [])):
                continue
            changed += await self.ensure_jump(jump)
        return changed

    async def remove_all(self) -> None:
        """Remove this node's jumps (each one, as often as it is there), then its chains.
        Other owners' chains and jumps stay."""
        for jump in jumps(self.prefix, docker_user=True) + jumps(self.prefix, docker_user=False):
            base = ["iptables", "-w", "-t", jump.table]
            while (
                await host.run(self._argv(*base, "-C", jump.chain, *jump.spec), check=False)
            ).code == 0:
                await host.run(self._argv(*base, "-D", jump.chain, *jump.spec))
        await self.restore(removal(self.prefix, await self.chains()))

    async def forget_flows(
        self, vip: str, node_ports: Sequence[int], removed: Iterable[str] = ()
    ) -> None:
        """Delete the conntrack entries of UDP flows to `vip` and, as kube-proxy does,
        those to the node ports that were sent to one of the `removed` endpoints
        (`--dst-nat <endpoint>`: a flow to the same port of another service on the host,
        or to an endpoint that stays, is kept; never every flow to a port). Without the
        conntrack tool: a warning, once."""
        commands = [["conntrack", "-D", "-p", "udp", "--orig-dst", vip]]
        for port in node_ports:
            by_port = ["conntrack", "-D", "-p", "udp", "--orig-port-dst", str(port)]
            commands += [[*by_port, "--dst-nat", ip] for ip in sorted(set(removed))]
        for argv in commands:
            try:
                ran = await host.run(self._argv(*argv), check=False)
            except host.CommandFailed:
                if not self._conntrack_warned:
                    self._conntrack_warned = True
                    log.warning(CONNTRACK_MISSING)
                return
            # 1: nothing matched ("0 flow entries have been deleted")
            if ran.code not in (0, 1):
                log.warning("`%s` exited %d: %s", " ".join(argv), ran.code, ran.stderr.strip())
