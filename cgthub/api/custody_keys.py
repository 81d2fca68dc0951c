"""`GET /custody/keys`: the public keys custody exports are signed with, for a consumer to pin.

Any valid API key reads it, whatever its scopes (no PHI scope, no data scope): a consumer fetches
it once, compares it out of band, and pins it (`cgthub api verify-custody FILE --public-key PEM`),
rather than trusting whatever a document or a later answer offers. The current key comes first,
then retired ones (documents signed before a rotation name them by key id).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from cgthub import custody_signing
from cgthub.api.auth import Principal
from cgthub.api.deps import any_key
from cgthub.api.errors import ERROR_RESPONSES

router = APIRouter(tags=["custody"], responses=ERROR_RESPONSES)


class CustodyKey(BaseModel):
    """One Ed25519 public key: the id a signed export names in `cgthub:signature.keyId`."""

    key_id: str = Field(description="'ed25519:' + first 16 hex of SHA-256 of the raw public key")
    algorithm: str = Field(default=custody_signing.ALGORITHM)
    status: str = Field(description="current (signs new exports) or retired (signed earlier ones)")
    first_used: str = Field(description="when the hub first signed with it (ISO 8601)")
    public_key_pem: str = Field(description="SubjectPublicKeyInfo PEM")


class CustodyKeys(BaseModel):
    """The keys to pin and the rule the signature follows."""

    signing_rule: str
    keys: list[CustodyKey]


@router.get("/custody/keys", response_model=CustodyKeys, summary="Public keys that sign custody exports")
def custody_keys(request: Request, _principal: Principal = Depends(any_key)) -> CustodyKeys:
    """The current and retired Ed25519 public keys of custody exports; any valid API key, no scope needed."""
    return CustodyKeys(
        signing_rule=custody_signing.SIGNING_RULE,
        keys=[
            CustodyKey(key_id=k.key_id, status=k.status, first_used=k.first_used, public_key_pem=k.public_key_pem)
            for k in custody_signing.published_keys(request.app.state.database_url)
        ],
    )
