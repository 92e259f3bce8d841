"""An ``id_token_hint``: an id_token this server issued, sent back by an app to name
the user it expects (OpenID Connect Core §3.1.2.1; RP-Initiated Logout 1.0 §2).

Its signature (by ``kid``, any key of the ring) and issuer are checked; its expiry is
not, because an app sends the one it holds, which has often expired by then.
"""

from __future__ import annotations

from typing import Any

from joserfc import jws, jwt
from joserfc.errors import JoseError

from smart.keys import KeyRing


class BadHint(ValueError):
    """Not an id_token this server signed."""


def hint_claims(hint: str, keyring: KeyRing, issuer: str) -> dict[str, Any]:
    """The claims of ``hint``; raises BadHint."""
    try:
        kid = jws.extract_compact(hint.encode("ascii")).headers().get("kid")
        key = keyring.get(kid) if isinstance(kid, str) else None
        claims = None if key is None else jwt.decode(hint, key.jwk, algorithms=[key.alg]).claims
    except (JoseError, ValueError) as exc:
        raise BadHint("id_token_hint is not an id_token of this server") from exc
    if claims is None or claims.get("iss") != issuer:
        raise BadHint("id_token_hint is not an id_token of this server")
    return dict(claims)
