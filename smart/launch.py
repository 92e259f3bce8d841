"""EHR launch contexts: an opaque ``launch`` value bound to a client, a patient
and optionally an encounter, minted by ``radhub launch`` or the launch API and
resolved at ``/auth/authorize``.

See https://build.fhir.org/ig/HL7/smart-app-launch/app-launch.html#launch-app-ehr-launch
"""

from __future__ import annotations

import time
from collections.abc import Callable

from fhir_server.storage.auth_port import AuthData, LaunchContext
from smart.secrets import digest, new_token


class UnknownClient(ValueError):
    """A launch was asked for a client that is not registered (it could never be used)."""


class Launches:
    """Mints and resolves launch values (stored hashed, valid until they expire)."""

    def __init__(
        self, auth: AuthData, ttl: int = 3600, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._auth = auth
        self._ttl = ttl
        self._clock = clock

    async def mint(self, client_id: str, patient: str, encounter: str | None = None) -> str:
        """A new launch value for this client and context; raises UnknownClient."""
        if await self._auth.get_client(client_id) is None:
            raise UnknownClient(f"unknown client {client_id}")
        value = new_token()
        expires = self._clock() + self._ttl
        await self._auth.put_launch(
            LaunchContext(digest(value), client_id, patient, expires, encounter)
        )
        return value

    async def resolve(self, value: str, client_id: str) -> LaunchContext | None:
        """The context of ``value`` if it is current and was minted for ``client_id``."""
        found = await self._auth.get_launch(digest(value))
        if found is None or found.client_id != client_id or found.expires_at < self._clock():
            return None
        return found
