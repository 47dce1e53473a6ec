"""The domain services of one process, built once from its Resources."""

from __future__ import annotations

from dataclasses import dataclass

from gemini_graphql.auth.service import AuthService
from gemini_graphql.resources import Resources


@dataclass(frozen=True, slots=True)
class Services:
    resources: Resources
    auth: AuthService

    @classmethod
    def build(cls, resources: Resources) -> Services:
        return cls(resources=resources, auth=AuthService(resources))
