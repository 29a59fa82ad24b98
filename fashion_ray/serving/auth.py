"""Who may call the served cascade.

With an API token (ServeConfig.auth_token_file: a mounted Kubernetes Secret or any file only
the server reads; never an environment variable in a Serve runtime_env, which Ray prints in
its logs) every route but the web page itself needs it, as `Authorization: Bearer <token>` or
as the password of HTTP Basic auth (what Label Studio's ML backend settings send). Without
one the server answers loopback clients only: `serve run` on a laptop stays open for its
user, and a server that is reachable from other hosts is closed until it is given a token.
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import os


class AuthConfigError(ValueError):
    """An auth setting that cannot work (a token file that is missing or empty)."""


def read_secret(path: str, what: str) -> str:
    """The first line of a secret file, stripped; refuses a missing or empty file."""
    try:
        with open(os.path.expanduser(path)) as f:
            secret = f.readline().strip()
    except OSError as exc:
        raise AuthConfigError(f"{what} {path!r} cannot be read: {exc.strerror}") from None
    if not secret:
        raise AuthConfigError(f"{what} {path!r} is empty")
    return secret


def is_loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def presented_secret(authorization: str) -> tuple[str, str]:
    """(scheme, secret) of an Authorization header: the bearer token, or Basic's password."""
    scheme, _, value = authorization.strip().partition(" ")
    scheme = scheme.lower()
    if scheme in ("bearer", "token"):
        return scheme, value.strip()
    if scheme == "basic":
        try:
            user_pass = base64.b64decode(value.strip(), validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            return scheme, ""
        return scheme, user_pass.partition(":")[2]
    return scheme, ""


def refusal(token: str, authorization: str, client_host: str | None) -> str | None:
    """Why this request may not go on (the 401 body), or None when it may."""
    if not token:
        if is_loopback(client_host):
            return None
        return ("this server has no API token configured (auth_token_file=...) and answers "
                "loopback clients only")
    _, secret = presented_secret(authorization)
    if secret and hmac.compare_digest(secret.encode(), token.encode()):
        return None
    return "a valid API token is required: 'Authorization: Bearer <token>' or HTTP Basic auth with it as the password"
