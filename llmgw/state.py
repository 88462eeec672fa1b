"""The typed keys under which the app factory puts each resource on the application."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from .client_address import TrustedProxies
from .clock import Clock
from .config import Settings
from .context import RequestContext
from .key_sync import KeySync
from .keys import KeyTable
from .ledger import Ledger
from .limits import Limiter
from .live import LiveStats
from .metrics import Metrics
from .store import Store
from .stored import StoredResponses
from .upstreams import UpstreamPool

SETTINGS = web.AppKey("settings", Settings)
CLOCK = web.AppKey("clock", Clock)
STORE = web.AppKey("store", Store)
KEYS = web.AppKey("keys", KeyTable)
KEY_SYNC = web.AppKey("key_sync", KeySync)
LIMITER = web.AppKey("limiter", Limiter)
UPSTREAMS = web.AppKey("upstreams", UpstreamPool)
CLIENT = web.AppKey("client", aiohttp.ClientSession)
LEDGER = web.AppKey("ledger", Ledger)
METRICS = web.AppKey("metrics", Metrics)
LIVE = web.AppKey("live", LiveStats)
TRUSTED_PROXIES = web.AppKey("trusted_proxies", TrustedProxies)
STORED_RESPONSES = web.AppKey("stored_responses", StoredResponses)
CONTEXT = web.RequestKey("context", RequestContext)
