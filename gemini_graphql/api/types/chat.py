"""Chatrooms, messages, their connections, and the mutations' inputs and payloads."""

from __future__ import annotations

import uuid
from datetime import datetime

import strawberry

from gemini_graphql.api.context import Info
from gemini_graphql.api.errors import UserError
from gemini_graphql.api.types.pagination import PageInfo, edges_and_info
from gemini_graphql.api.types.user import UsageType
from gemini_graphql.chat.messages import PageRequest, Sent, message_cursor
from gemini_graphql.chat.pages import Page
from gemini_graphql.chat.rooms import room_cursor
from gemini_graphql.models import Chatroom, Message
from gemini_graphql.models import MessageRole as DomainMessageRole
from gemini_graphql.models import MessageStatus as DomainMessageStatus

MessageRole = strawberry.enum(DomainMessageRole, name="MessageRole")
MessageStatus = strawberry.enum(
    DomainMessageStatus,
    name="MessageStatus",
    description="USER messages are COMPLETE; a reply goes PENDING, STREAMING, then COMPLETE or FAILED.",
)

_FINAL = (DomainMessageStatus.COMPLETE, DomainMessageStatus.FAILED)


@strawberry.type(name="Message")
class MessageType:
    id: strawberry.ID
    chatroom_id: strawberry.ID
    role: MessageRole  # type: ignore[valid-type]
    content: str = strawberry.field(
        description="For an ASSISTANT message still streaming: the text saved so far."
    )
    status: MessageStatus  # type: ignore[valid-type]
    error: str | None = strawberry.field(description="Why an ASSISTANT message FAILED.")
    created_at: datetime

    @classmethod
    def of(cls, message: Message) -> MessageType:
        return cls(
            id=strawberry.ID(str(message.id)),
            chatroom_id=strawberry.ID(str(message.chatroom_id)),
            role=DomainMessageRole(message.role),
            content=message.content,
            status=DomainMessageStatus(message.status),
            error=message.error,
            created_at=message.created_at,
        )


@strawberry.type
class MessageEdge:
    cursor: str
    node: MessageType


@strawberry.type
class MessageConnection:
    edges: list[MessageEdge]
    page_info: PageInfo

    @classmethod
    def of(cls, page: Page[Message]) -> MessageConnection:
        edges, info = edges_and_info(
            page,
            message_cursor,
            lambda cursor, m: MessageEdge(cursor=cursor, node=MessageType.of(m)),
        )
        return cls(edges=edges, page_info=info)


@strawberry.type(name="Chatroom")
class ChatroomType:
    id: strawberry.ID
    title: str
    description: str | None
    created_at: datetime
    updated_at: datetime = strawberry.field(description="Bumped by every new message.")
    model: strawberry.Private[Chatroom]

    @strawberry.field(
        description="Oldest first within a page. `last: N` gives the newest N (the default, "
        "with N = 20); `before` pages back in time. At most 100 per page."
    )
    async def messages(
        self,
        info: Info,
        first: int | None = None,
        after: str | None = None,
        last: int | None = None,
        before: str | None = None,
    ) -> MessageConnection:
        request = PageRequest(first=first, after=after, last=last, before=before)
        page = await info.context.loaders.messages.load((self.model.id, request))
        return MessageConnection.of(page)

    @classmethod
    def of(cls, room: Chatroom) -> ChatroomType:
        return cls(
            id=strawberry.ID(str(room.id)),
            title=room.title,
            description=room.description,
            created_at=room.created_at,
            updated_at=room.updated_at,
            model=room,
        )


@strawberry.type
class ChatroomEdge:
    cursor: str
    node: ChatroomType


@strawberry.type
class ChatroomConnection:
    edges: list[ChatroomEdge]
    page_info: PageInfo

    @classmethod
    def of(cls, page: Page[Chatroom]) -> ChatroomConnection:
        edges, info = edges_and_info(
            page,
            room_cursor,
            lambda cursor, r: ChatroomEdge(cursor=cursor, node=ChatroomType.of(r)),
        )
        return cls(edges=edges, page_info=info)


@strawberry.input
class CreateChatroomInput:
    title: str = strawberry.field(description="1 to 255 characters after trimming.")
    description: str | None = strawberry.field(default=None, description="Up to 2,000 characters.")


@strawberry.type
class CreateChatroomPayload:
    chatroom: ChatroomType | None = None
    errors: list[UserError] = strawberry.field(default_factory=list)


@strawberry.input
class SendMessageInput:
    chatroom_id: strawberry.ID
    content: str = strawberry.field(description="1 to 10,000 characters after trimming.")


@strawberry.type
class SendMessagePayload:
    message: MessageType | None = strawberry.field(
        default=None, description="The stored USER message."
    )
    reply: MessageType | None = strawberry.field(
        default=None,
        description="The ASSISTANT message, PENDING: subscribe to messageStream(reply.id).",
    )
    usage: UsageType | None = None
    errors: list[UserError] = strawberry.field(default_factory=list)

    @classmethod
    def of(cls, sent: Sent) -> SendMessagePayload:
        return cls(
            message=MessageType.of(sent.message),
            reply=MessageType.of(sent.reply),
            usage=UsageType.of(sent.usage),
        )


@strawberry.type(
    description="One piece of a reply. Concatenating `delta` over seq 1..n gives the whole reply."
)
class ReplyEvent:
    message_id: strawberry.ID
    seq: int = strawberry.field(description="1, 2, 3, ... within one reply.")
    delta: str = strawberry.field(description='New text since seq-1 ("" on the final event).')
    status: MessageStatus = strawberry.field(  # type: ignore[valid-type]
        description="STREAMING until the final event: COMPLETE or FAILED."
    )
    reply_id: strawberry.Private[uuid.UUID]
    stored: strawberry.Private[Message | None] = None  # the finished row, when already read

    @strawberry.field(description="On the final event: the stored ASSISTANT message.")
    async def message(self, info: Info) -> MessageType | None:
        """Read only when selected: most clients ask for the deltas alone."""
        if self.status not in _FINAL:
            return None
        stored = self.stored or await info.context.services.messages.get(self.reply_id)
        return MessageType.of(stored) if stored else None
