"""A quick look, before a Hugging Face hub request, at whether the hub's host resolves at all.

Without a network, huggingface_hub retries each request five times with back-off (about 20 s) before it gives up,
and the error that reaches us then names neither the cause nor the local cache. A host that does not resolve is
known at once. Nothing is looked at where the request could succeed without resolving the host here: offline mode
(the libraries read their cache), a proxy (it resolves the host itself), or a file already in the hub cache.
A host that resolves but cannot be reached still takes the libraries' retries.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

from data.errors import DataError

# The variables the Hugging Face libraries read as offline mode, and the values they read as true.
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
TRUE_VALUES = {"1", "ON", "YES", "TRUE"}


def hub_offline() -> bool:
    """Whether the environment asks the Hugging Face libraries to work from their cache alone."""
    return any(os.environ.get(name, "").upper() in TRUE_VALUES for name in OFFLINE_VARIABLES)


def check_hub_reachable(what: str, otherwise: str) -> None:
    """Refuse at once, naming what was wanted and the two ways on (`otherwise`, or the cache), where the hub's host
    (HF_ENDPOINT's, huggingface.co by default) does not resolve and no proxy would resolve it instead; nothing is
    checked in offline mode."""
    if hub_offline():
        return
    import urllib.request  # (imported here: most processes never ask the hub)

    from huggingface_hub import constants  # the endpoint as the hub libraries will use it

    endpoint = urlparse(constants.ENDPOINT)
    host = endpoint.hostname or constants.ENDPOINT
    proxies = urllib.request.getproxies()  # the *_proxy variables, which the hub's HTTP client honours
    if (endpoint.scheme in proxies or "all" in proxies) and not urllib.request.proxy_bypass(host):
        return
    try:
        socket.getaddrinfo(host, None)
    except (OSError, UnicodeError) as exc:  # socket.gaierror is an OSError
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise DataError(
            f"cannot reach the Hugging Face hub for {what}: {host} does not resolve ({reason}); {otherwise}, or set "
            "HF_HUB_OFFLINE=1 to load it from the local cache"
        ) from exc
