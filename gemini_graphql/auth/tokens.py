"""Access tokens: HS256 JWTs carrying the user id and the user's token version."""

from __future__ import annotations

import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import timedelta

import jwt

from gemini_graphql.clock import Clock
from gemini_graphql.config import Settings
from gemini_graphql.errors import Unauthenticated

ALGORITHM = "HS256"
VERSION_CLAIM = "ver"
# Tokens whose signature and claims were verified, remembered by their exact text.
VERIFIED_CACHE_SIZE = 10_000


@dataclass(frozen=True, slots=True)
class AccessToken:
    token: str
    expires_in: int  # seconds


@dataclass(frozen=True, slots=True)
class TokenClaims:
    user_id: uuid.UUID
    version: int
    expires_at: int  # Unix seconds


class TokenCodec:
    def __init__(self, settings: Settings, clock: Clock) -> None:
        self._key = settings.secret_key
        self._issuer = settings.jwt_issuer
        self._audience = settings.jwt_audience
        self._lifetime = timedelta(minutes=settings.access_token_expire_minutes)
        self._clock = clock
        self._verified: OrderedDict[str, TokenClaims] = OrderedDict()

    def issue(self, user_id: uuid.UUID, version: int) -> AccessToken:
        now = self._clock()
        claims = {
            "sub": str(user_id),
            "iat": int(now.timestamp()),
            "exp": int((now + self._lifetime).timestamp()),
            "iss": self._issuer,
            "aud": self._audience,
            VERSION_CLAIM: version,
        }
        token = jwt.encode(claims, self._key, algorithm=ALGORITHM)
        return AccessToken(token=token, expires_in=int(self._lifetime.total_seconds()))

    def decode(self, token: str) -> TokenClaims:
        """Verify signature, algorithm, expiry, issuer and audience; raise Unauthenticated.

        Verifying costs more than the rest of a small request, and a client sends the same
        token many times: what a token's text says never changes, so verified claims are
        kept by that text and only the expiry is checked again.
        """
        claims = self._verified.get(token)
        if claims is None:
            claims = self._verify(token)
            self._verified[token] = claims
            if len(self._verified) > VERIFIED_CACHE_SIZE:
                self._verified.popitem(last=False)
        else:
            self._verified.move_to_end(token)
        if claims.expires_at <= self._clock().timestamp():
            raise Unauthenticated("The access token has expired; log in again.", "token expired")
        return claims

    def _verify(self, token: str) -> TokenClaims:
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[ALGORITHM],  # pinned: never trust the header's `alg`
                audience=self._audience,
                issuer=self._issuer,
                # Times are checked below against the injectable clock.
                options={
                    "require": ["sub", "iat", "exp", "iss", "aud", VERSION_CLAIM],
                    "verify_exp": False,
                    "verify_iat": False,
                },
            )
        except jwt.PyJWTError:
            raise Unauthenticated("The access token is invalid.", "token invalid") from None
        exp, version = claims["exp"], claims[VERSION_CLAIM]
        if not isinstance(exp, int):
            raise Unauthenticated("The access token is invalid.", "token invalid")
        try:
            user_id = uuid.UUID(claims["sub"])
        except (ValueError, TypeError, AttributeError):
            raise Unauthenticated("The access token is invalid.", "token invalid") from None
        if not isinstance(version, int):
            raise Unauthenticated("The access token is invalid.", "token invalid")
        return TokenClaims(user_id=user_id, version=version, expires_at=exp)


def bearer_token(header: str | None) -> str | None:
    """The token in an `Authorization` value; `Bearer ` is optional (some ws clients omit it)."""
    if not header:
        return None
    value = header.strip()
    scheme, _, rest = value.partition(" ")
    if rest and scheme.lower() == "bearer":
        return rest.strip() or None
    return value if " " not in value else None
