"""Who may call the served cascade.

With an API token (ServeConfig.auth_token_file: a mounted Kubernetes Secret or any file only
the server reads; never an environment variable in a Serve runtime_env, which Ray prints in
its logs) every route but the web page itself needs it, as `Authorization: Bearer <token>` or
as the password of HTTP Basic auth (what Label Studio's ML backend settings send). Without
one the server answers loopback clients only: `serve run` on a laptop stays open for its
user, and a server that is reachable from other hosts is closed until it is given a token.

"Loopback client" is decided strictly, as a laptop's browser is the one caller it is for:
Serve must listen on a loopback address (a server bound to 0.0.0.0 does not start without
a token); the peer must be 127.0.0.1 or ::1 (a service-mesh sidecar relays other hosts'
requests from 127.0.0.6); a request a proxy forwarded (Forwarded, X-Forwarded-For,
X-Real-IP: uvicorn rewrites the client address from them when FORWARDED_ALLOW_IPS trusts
the sender) is not the local user's; and the Host header must name loopback, so that a web
page whose own name resolves to 127.0.0.1 (DNS rebinding) cannot read the answers.
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import os

from fashion_ray.errors import InputError


class AuthConfigError(InputError):
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


LOOPBACK_PEERS = ("127.0.0.1", "::1")
LOOPBACK_HOST_NAMES = ("localhost", "127.0.0.1", "[::1]")
FORWARDING_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip")


def is_loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def check_listening_address(http_host: str, token: str) -> None:
    """Refuse to serve with no token on an address other hosts can reach (AuthConfigError)."""
    if not token and not (is_loopback(http_host) or http_host == "localhost"):
        raise AuthConfigError(
            f"Serve listens on {http_host!r} and this server has no API token: give it "
            "auth_token_file=<a secret file>, or listen on 127.0.0.1 (serve run's default)"
        )


def names_loopback(host_header: str) -> bool:
    """Whether a Host header ("localhost:8000", "[::1]:8000", ...) names this machine's loopback."""
    name = host_header.strip().lower()
    name = name[: name.find("]") + 1] if name.startswith("[") else name.partition(":")[0]
    return name in LOOPBACK_HOST_NAMES


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


def refusal(token: str, headers, client_host: str | None) -> str | None:
    """Why this request may not go on (the 401 body), or None when it may. `headers`: the
    request's, looked up by lower-case name."""
    if not token:
        why = "this server has no API token configured (auth_token_file=...) and answers loopback clients only"
        if client_host not in LOOPBACK_PEERS:
            return why
        if any(headers.get(name) for name in FORWARDING_HEADERS):
            return why + "; this request was forwarded by a proxy"
        if not names_loopback(headers.get("host", "")):
            return why + ", addressed as localhost, 127.0.0.1 or [::1] (the Host header)"
        return None
    _, secret = presented_secret(headers.get("authorization", ""))
    if secret and hmac.compare_digest(secret.encode(), token.encode()):
        return None
    return "a valid API token is required: 'Authorization: Bearer <token>' or HTTP Basic auth with it as the password"
