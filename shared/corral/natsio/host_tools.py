"""Running a host tool from a service's node part (netmgr's `ip`, `iptables`; volmgr's
`mount`, `losetup`, `mkfs.ext4`): through anyio.run_process, never blocking the event
loop, with a time limit, and one clear error for a tool missing, hanging or failing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import anyio


class CommandFailed(Exception):
    """A host tool exited with an error: the command and what it said."""


@dataclass(frozen=True, slots=True)
class Ran:
    code: int
    stdout: str
    stderr: str


async def run_tool(
    argv: Sequence[str], stdin: str | None = None, *, check: bool = True, seconds: float
) -> Ran:
    """Run a host tool; CommandFailed when it is missing, gives no answer within
    `seconds`, or exits non-zero (with `check`)."""
    try:
        with anyio.fail_after(seconds):
            done = await anyio.run_process(
                list(argv),
                input=None if stdin is None else stdin.encode(),
                check=False,
            )
    except FileNotFoundError:
        raise CommandFailed(f"{argv[0]}: not installed") from None
    except TimeoutError:
        raise CommandFailed(f"{' '.join(argv)}: no answer within {seconds:g} s") from None
    ran = Ran(
        done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")
    )
    if check and ran.code != 0:
        raise CommandFailed(f"`{' '.join(argv)}` exited {ran.code}: {_said(ran)}")
    return ran


# What a failed tool said, in a message: its last lines, each trimmed, at most this much
# (a tool's reason often spans lines: mkfs.ext4's "... too big" then "... -N").
SAID_LINES: Final = 3
SAID_CHARACTERS: Final = 400


def _said(ran: Ran) -> str:
    lines = [line.strip() for line in (ran.stderr or ran.stdout).splitlines() if line.strip()]
    if not lines:
        return "no message"
    said = " / ".join(lines[-SAID_LINES:])
    if len(said) > SAID_CHARACTERS:
        said = "..." + said[-SAID_CHARACTERS:]
    return said
