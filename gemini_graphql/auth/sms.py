"""Delivery of one-time codes by SMS."""

from __future__ import annotations

import logging
from typing import Protocol

import httpx

from gemini_graphql.config import Settings

log = logging.getLogger(__name__)


class SmsSender(Protocol):
    async def send(self, mobile_number: str, text: str) -> None: ...


class ConsoleSmsSender:
    """Writes the message to the log: for dev and test only (production refuses it)."""

    async def send(self, mobile_number: str, text: str) -> None:
        log.warning("SMS to %s: %s", mobile_number, text)


class WebhookSmsSender:
    """POSTs `{"to", "body"}` as JSON to a gateway the operator runs (Twilio, SNS, ...)."""

    def __init__(self, url: str, token: str | None, timeout: float = 5.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.AsyncClient(headers=headers, timeout=timeout)
        self._url = url

    async def send(self, mobile_number: str, text: str) -> None:
        response = await self._client.post(self._url, json={"to": mobile_number, "body": text})
        response.raise_for_status()


def build_sms_sender(settings: Settings) -> SmsSender:
    if settings.sms_backend == "webhook" and settings.sms_webhook_url:
        return WebhookSmsSender(settings.sms_webhook_url, settings.sms_webhook_token)
    return ConsoleSmsSender()
