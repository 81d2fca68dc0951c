"""Who is at the console: the Airflow user behind the request, with the hub scopes their role grants.

Airflow's API server mounts plugin apps without its own auth, so every console page checks the
JWT Airflow's UI holds (the `_token` cookie, or a Bearer header) through Airflow's auth manager
itself; a request without a valid token is sent to Airflow's login page. The Airflow role is mapped
to hub scopes and a data scope (sites, CMOs, markets) by config/console_roles.yaml, so a signed-in
operator needs no hub API key.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from fastapi import Request

from cgthub.api.auth import Principal
from cgthub.errors import CgthubError
from cgthub.settings import get_settings

AIRFLOW_TOKEN_COOKIE = "_token"  # noqa: S105  (the cookie's name in Airflow's auth managers, not a secret)

RELEASE_HOLD = "orders:release-hold"
RESOLVE_ALERT = "alerts:resolve"
QUARANTINE_ACT = "quarantine:act"
OUTBOX_REPLAY = "outbox:replay"
ACTION_SCOPES = (RELEASE_HOLD, RESOLVE_ALERT, QUARANTINE_ACT, OUTBOX_REPLAY)


class SignInRequired(CgthubError):
    """No valid Airflow session: the console answers with a redirect to Airflow's login page."""


@dataclass(frozen=True)
class ConsoleUser:
    """An Airflow user as the hub sees them: a Principal (read scopes, data scope) plus action scopes."""

    name: str
    roles: tuple[str, ...]
    principal: Principal

    def may(self, action: str) -> bool:
        return action in self.principal.scopes or "admin" in self.principal.scopes

    @property
    def actions(self) -> frozenset[str]:
        return frozenset(a for a in ACTION_SCOPES if self.may(a))


def roles_file() -> Path:
    return get_settings().config_dir / "console_roles.yaml"


@lru_cache(maxsize=4)
def _load_roles(path: Path, _mtime: float) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text()) or {}
    return {"roles": data.get("roles") or {}, "users": data.get("users") or {}}


def role_config() -> dict[str, Any]:
    path = roles_file()
    return _load_roles(path, path.stat().st_mtime)


def _airflow_roles(user: Any) -> tuple[str, ...]:
    """The role names an auth manager's user carries (the simple auth manager: `role`; FAB: `roles`)."""
    role = getattr(user, "role", None)
    if isinstance(role, str) and role:
        return (role.lower(),)
    return tuple(str(getattr(r, "name", r)).lower() for r in getattr(user, "roles", None) or ())


def principal_for(name: str, roles: tuple[str, ...]) -> Principal:
    """The union of the grants of every role the user holds (a per-user entry replaces them)."""
    config = role_config()
    grants = [config["users"][name]] if name in config["users"] else [config["roles"].get(r) for r in roles]
    scopes: set[str] = set()
    sites: set[str] = set()
    cmos: set[str] = set()
    markets: set[str] = set()
    all_data = False
    for grant in filter(None, grants):
        scopes.update(grant.get("scopes") or ())
        data = grant.get("data") or {}
        if data == "all":
            all_data = True
        elif isinstance(data, dict):
            sites.update(data.get("sites") or ())
            cmos.update(data.get("cmos") or ())
            markets.update(m.upper() for m in data.get("markets") or ())
    return Principal(
        key_id=f"airflow:{name}"[:40],
        name=name,
        scopes=frozenset(scopes),
        sites=frozenset(sites),
        cmos=frozenset(cmos),
        markets=frozenset(markets),
        all_data=all_data,
    )


def request_token(request: Request) -> str | None:
    """The caller's Airflow JWT: an explicit Bearer header wins over the UI's session cookie."""
    header = request.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return request.cookies.get(AIRFLOW_TOKEN_COOKIE)


async def console_user(request: Request) -> ConsoleUser:
    """The signed-in Airflow user, checked by Airflow's auth manager; SignInRequired if there is none."""
    from airflow.api_fastapi.app import get_auth_manager
    from jwt import InvalidTokenError

    token = request_token(request)
    if not token:
        raise SignInRequired
    try:
        user = await get_auth_manager().get_user_from_token(token)
    except InvalidTokenError as exc:  # expired, forged or signed by another deployment
        raise SignInRequired from exc
    name = str(user.get_name())
    roles = _airflow_roles(user)
    return ConsoleUser(name=name, roles=roles, principal=principal_for(name, roles))


CONSOLE_SIGN_IN = "console.sign_in"


class SignIns:
    """Records each Airflow session's first request to the console in the audit trail, once.

    A session is one Airflow token (its `jti`, else its subject and issue time). The process keeps
    the sessions it has recorded; a session first seen by another worker is found in the trail."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def note(self, url: str, user: ConsoleUser, token: str) -> None:
        import jwt
        from sqlalchemy import select

        from cgthub import audit_trail
        from cgthub.store import session_scope
        from cgthub.tables import AuditRecord

        claims = jwt.decode(token, options={"verify_signature": False})  # verified by Airflow already
        session_id = str(claims.get("jti") or f"{claims.get('sub')}@{claims.get('iat')}")[:120]
        if session_id in self._seen:
            return
        subject = f"airflow-session:{session_id}"
        with session_scope(url) as session:
            recorded = session.scalar(
                select(AuditRecord.id).where(AuditRecord.action == CONSOLE_SIGN_IN, AuditRecord.subject == subject)
            )
            if recorded is None:
                audit_trail.record(
                    session, CONSOLE_SIGN_IN, subject, {"roles": list(user.roles)}, actor=f"airflow:{user.name}"
                )
        self._seen.add(session_id)


def _own_hosts(request: Request) -> set[str]:
    """The host:port the browser addressed (Host), and Airflow's configured base_url's (behind a proxy)."""
    from urllib.parse import urlsplit

    from airflow.configuration import conf

    hosts = {request.headers.get("host", "").lower()}
    base_url = conf.get("api", "base_url", fallback="") or ""
    if base_url:
        hosts.add(urlsplit(base_url).netloc.lower())
    return hosts - {""}


def cross_site(request: Request) -> str | None:
    """What shows a POST came from a page of another site (None if nothing does).

    Airflow's cookie is SameSite=Lax, so a browser sends it with no cross-site POST, but a sibling
    subdomain is the same site; and the operator's password must not be the only defence. A browser
    names the page a form was posted from (Sec-Fetch-Site, Origin, else Referer); a client that
    names none (the CLI's or a script's Bearer token) is not a browser page of anyone's."""
    from urllib.parse import urlsplit

    fetched_from = request.headers.get("sec-fetch-site", "").lower()
    if fetched_from in ("cross-site", "same-site"):
        return f"Sec-Fetch-Site {fetched_from}"
    origin = request.headers.get("origin")
    if origin is not None:
        if origin == "null" or urlsplit(origin).netloc.lower() not in _own_hosts(request):
            return f"Origin {origin[:80]}"
        return None
    referer = request.headers.get("referer")
    if referer and urlsplit(referer).netloc.lower() not in _own_hosts(request):
        return f"Referer {urlsplit(referer).netloc[:80]}"
    return None


def login_url(next_url: str) -> str:
    """Airflow's own login page, coming back to `next_url` once signed in."""
    from airflow.api_fastapi.app import get_auth_manager

    return get_auth_manager().get_url_login(next_url=next_url)
