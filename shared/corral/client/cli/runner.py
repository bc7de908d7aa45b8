"""Running one CLI command: resolve the NATS URL, connect within a bound, and turn
every failure a user can cause into a one-line error on stderr with exit code 1."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TypeVar

import anyio
import click
import nats
from nats.js import errors as js_errors

from corral.client.api import CorralClient, CorralError
from corral.client.cli.options import given_namespace, namespace_of
from corral.natsio.config import resolve_nats_url

T = TypeVar("T")

DEFAULT_TIMEOUT = 5.0
CONNECT_TIMEOUT = 3.0


@dataclass(frozen=True)
class Settings:
    nats_flag: str | None
    timeout: float
    # -n/--namespace of the command (None: $CORRAL_NAMESPACE, else default;
    # corral.client.cli.options)
    namespace: str | None = None

    def nats_url(self) -> str:
        try:
            return resolve_nats_url(self.nats_flag)
        except ValueError as error:
            raise click.ClickException(str(error)) from None


def settings_of(ctx: click.Context) -> Settings:
    settings = ctx.find_object(Settings)
    if settings is None:  # a command invoked without the group (tests)
        settings = Settings(None, DEFAULT_TIMEOUT)
    return replace(settings, namespace=given_namespace(ctx))


def _user_error(error: BaseException) -> CorralError | None:
    """The CorralError to show for a failure, looking inside exception groups."""
    if isinstance(error, CorralError):
        return error
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            found = _user_error(inner)
            if found is not None:
                return found
    return None


def run_with_client(settings: Settings, command: Callable[[CorralClient], Awaitable[T]]) -> T:
    """Connect, run the command, close; CorralError becomes a click error (exit 1)."""
    url = settings.nats_url()
    namespace = namespace_of(settings.namespace)

    async def main() -> T:
        client = await CorralClient.connect(
            url, min(CONNECT_TIMEOUT, settings.timeout), request_timeout=settings.timeout
        )
        client.namespace = namespace
        async with client:
            try:
                return await command(client)
            except TimeoutError:
                raise CorralError(
                    f"NATS at {url} did not answer within {settings.timeout:g} s"
                ) from None
            except (nats.errors.Error, js_errors.Error) as error:
                raise CorralError(f"NATS at {url}: {error or type(error).__name__}") from None

    try:
        return anyio.run(main)
    except click.ClickException:
        raise
    except BaseException as error:
        found = _user_error(error)
        if found is None:
            raise
        raise click.ClickException(str(found)) from None
