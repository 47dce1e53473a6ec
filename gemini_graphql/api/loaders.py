"""Per-request DataLoaders: a page of rooms asking for their messages costs one query, a
page of messages asking for their versions another."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence

from strawberry.dataloader import DataLoader

from gemini_graphql.chat.messages import Messages, PageRequest
from gemini_graphql.chat.pages import Page
from gemini_graphql.chat.tree import VersionGroup
from gemini_graphql.models import Message

MessagePageKey = tuple[uuid.UUID, PageRequest]


class Loaders:
    def __init__(self, messages: Messages) -> None:
        self._messages = messages
        self.messages: DataLoader[MessagePageKey, Page[Message]] = DataLoader(self._load_pages)
        self.versions: DataLoader[VersionGroup, list[Message]] = DataLoader(self._load_versions)

    async def _load_versions(self, groups: Sequence[VersionGroup]) -> list[list[Message]]:
        found = await self._messages.versions(groups)
        return [found[group] for group in groups]

    async def _load_pages(
        self, keys: Sequence[MessagePageKey]
    ) -> list[Page[Message] | BaseException]:
        by_request: dict[PageRequest, list[uuid.UUID]] = defaultdict(list)
        for room_id, request in keys:
            by_request[request].append(room_id)
        found: dict[MessagePageKey, Page[Message] | BaseException] = {}
        for request, room_ids in by_request.items():
            try:
                pages = await self._messages.pages(room_ids, request)
            except Exception as exc:  # e.g. a bad cursor: an error for these keys only
                found.update({(room_id, request): exc for room_id in room_ids})
                continue
            found.update(
                {(room_id, request): page for room_id, page in zip(room_ids, pages, strict=True)}
            )
        return [found[key] for key in keys]
