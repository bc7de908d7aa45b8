"""corral.natsio.host_tools: the one runner of host tools both node parts use
(netmgr's and volmgr's node/host.py)."""

from __future__ import annotations

import sys

import pytest

from corral.natsio.host_tools import CommandFailed, run_tool
from corral_netmgr.node import host as net_host
from corral_volmgr.node import host as vol_host


async def test_a_tool_gets_its_stdin_and_its_output_is_returned() -> None:
    code = "import sys; print(sys.stdin.read().upper())"
    ran = await run_tool([sys.executable, "-c", code], "hello", seconds=30)
    assert (ran.code, ran.stdout.strip()) == (0, "HELLO")


async def test_a_failing_tool_is_refused_with_its_last_lines_unless_not_checked() -> None:
    """mkfs.ext4 says why over two lines; the last alone ("or lower inode count (-N).")
    says nothing."""
    said = "'zero\\nfirst\\n\\n  too big\\n\\tor lower (-N).\\n'"
    argv = [sys.executable, "-c", f"import sys; print({said}, file=sys.stderr); exit(3)"]
    with pytest.raises(CommandFailed, match=r"exited 3: first / too big / or lower \(-N\)\.$"):
        await run_tool(argv, seconds=30)
    assert (await run_tool(argv, check=False, seconds=30)).code == 3


async def test_a_missing_tool_and_a_hanging_one_say_so() -> None:
    with pytest.raises(CommandFailed, match="not installed"):
        await run_tool(["corral-no-such-tool"], seconds=30)
    with pytest.raises(CommandFailed, match=r"no answer within 0\.2 s"):
        await run_tool([sys.executable, "-c", "import time; time.sleep(30)"], seconds=0.2)


def test_both_node_parts_raise_the_one_command_failed() -> None:
    assert net_host.CommandFailed is vol_host.CommandFailed is CommandFailed
