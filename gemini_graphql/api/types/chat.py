"""Chatrooms, messages, their connections, room events, and the mutations' inputs and
payloads."""

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
from gemini_graphql.chat.room_events import RoomEvent, RoomEventType
from gemini_graphql.chat.rooms import room_cursor
from gemini_graphql.models import FINISHED_STATUSES, Chatroom, Message
from gemini_graphql.models import MessageRole as DomainMessageRole
from gemini_graphql.models import MessageStatus as DomainMessageStatus

MessageRole = strawberry.enum(DomainMessageRole, name="MessageRole")
MessageStatus = strawberry.enum(
    DomainMessageStatus,
    name="MessageStatus",
    description="USER messages are COMPLETE; a reply goes PENDING, STREAMING, then COMPLETE, "
    "FAILED or STOPPED (stopReply, or its room deleted).",
)
ChatroomEventType = strawberry.enum(
    RoomEventType,
    name="ChatroomEventType",
    description="What happened in one of your rooms.",
)


@strawberry.type(description="Gemini's usage metadata of one reply, over every call it took.")
class TokenUsage:
    prompt_tokens: int
    output_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, message: Message) -> TokenUsage | None:
        if message.total_tokens is None:
            return None
        return cls(
            prompt_tokens=message.prompt_tokens or 0,
            output_tokens=message.output_tokens or 0,
            total_tokens=message.total_tokens,
        )


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
    parent_id: strawberry.ID | None = strawberry.field(
        description="An ASSISTANT message's parent is the USER message it answers; a USER "
        "message's the message it follows (null for a room's first message)."
    )
    token_usage: TokenUsage | None = strawberry.field(
        description="ASSISTANT messages once COMPLETE (STOPPED or FAILED: when Gemini reported "
        "it); null otherwise."
    )
    model: strawberry.Private[Message]

    @strawberry.field(
        description="1-based position among the messages with the same parent, oldest first."
    )
    async def version(self, info: Info) -> int:
        versions = await self._versions(info)
        return next((index for index, m in enumerate(versions, 1) if m.id == self.model.id), 1)

    @strawberry.field(
        description="How many messages share this parent (1 when never edited or regenerated)."
    )
    async def version_count(self, info: Info) -> int:
        return max(1, len(await self._versions(info)))

    @strawberry.field(description="All versions, oldest first, this one included.")
    async def versions(self, info: Info) -> list[MessageType]:
        return [MessageType.of(m) for m in await self._versions(info)] or [self]

    async def _versions(self, info: Info) -> list[Message]:
        group = (self.model.chatroom_id, self.model.parent_id)
        return await info.context.loaders.versions.load(group)

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
            parent_id=strawberry.ID(str(message.parent_id)) if message.parent_id else None,
            token_usage=TokenUsage.of(message),
            model=message,
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
    updated_at: datetime = strawberry.field(
        description="Bumped by every new message, and by updateChatroom."
    )
    system_instruction: str | None = strawberry.field(
        description="Sent to Gemini as the system instruction of every reply in this room "
        "(null: the service's default)."
    )
    model: strawberry.Private[Chatroom]

    @strawberry.field(
        description="The current branch, oldest first within a page. `last: N` gives the "
        "newest N (the default, with N = 20); `before` pages back in time along the branch "
        "of the cursor's message. At most 100 per page."
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
            system_instruction=room.system_instruction,
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
    system_instruction: str | None = strawberry.field(
        default=None, description="Up to 4,000 characters; the system instruction of its replies."
    )


@strawberry.type
class CreateChatroomPayload:
    chatroom: ChatroomType | None = None
    errors: list[UserError] = strawberry.field(default_factory=list)


@strawberry.input(
    description="Omitted fields stay as they are; an explicit null clears description or "
    "systemInstruction."
)
class UpdateChatroomInput:
    id: strawberry.ID
    title: str | None = strawberry.field(
        default=strawberry.UNSET, description="1 to 255 characters after trimming."
    )
    description: str | None = strawberry.field(
        default=strawberry.UNSET, description="Up to 2,000 characters."
    )
    system_instruction: str | None = strawberry.field(
        default=strawberry.UNSET, description="Up to 4,000 characters."
    )


@strawberry.type
class UpdateChatroomPayload:
    chatroom: ChatroomType | None = None
    errors: list[UserError] = strawberry.field(default_factory=list)


@strawberry.input
class DeleteChatroomInput:
    id: strawberry.ID


@strawberry.type
class DeleteChatroomPayload:
    deleted_id: strawberry.ID | None = None
    errors: list[UserError] = strawberry.field(default_factory=list)


@strawberry.input
class StopReplyInput:
    message_id: strawberry.ID = strawberry.field(description="A PENDING or STREAMING reply.")


@strawberry.type
class StopReplyPayload:
    message: MessageType | None = strawberry.field(
        default=None,
        description="The reply, STOPPED (or as it had already ended): its content is exactly "
        "the text streamed before the stop.",
    )
    errors: list[UserError] = strawberry.field(default_factory=list)


@strawberry.input
class RegenerateReplyInput:
    message_id: strawberry.ID = strawberry.field(
        description="An ASSISTANT message that is COMPLETE, FAILED or STOPPED."
    )


@strawberry.input
class EditMessageInput:
    message_id: strawberry.ID = strawberry.field(description="A USER message.")
    content: str = strawberry.field(description="1 to 10,000 characters after trimming.")


@strawberry.input
class SelectVersionInput:
    message_id: strawberry.ID = strawberry.field(description="Any message of the version wanted.")


@strawberry.type
class SelectVersionPayload:
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
        description="STREAMING until the final event: COMPLETE, FAILED or STOPPED."
    )
    reply_id: strawberry.Private[uuid.UUID]
    stored: strawberry.Private[Message | None] = None  # the finished row, when already read

    @strawberry.field(description="On the final event: the stored ASSISTANT message.")
    async def message(self, info: Info) -> MessageType | None:
        """Read only when selected: most clients ask for the deltas alone."""
        if self.status not in FINISHED_STATUSES:
            return None
        stored = self.stored or await info.context.services.messages.get(self.reply_id)
        return MessageType.of(stored) if stored else None


_WITH_MESSAGE = (RoomEventType.MESSAGE_ADDED, RoomEventType.REPLY_FINISHED)


@strawberry.type(description="Something that happened in one of your rooms, on any device.")
class ChatroomEvent:
    type: ChatroomEventType  # type: ignore[valid-type]
    chatroom_id: strawberry.ID
    at: datetime
    event: strawberry.Private[RoomEvent]
    owner_id: strawberry.Private[uuid.UUID]

    @strawberry.field(description="The room as it is now; null for CHATROOM_DELETED.")
    async def chatroom(self, info: Info) -> ChatroomType | None:
        """Read only when selected."""
        if self.event.type is RoomEventType.CHATROOM_DELETED:
            return None
        room = await info.context.services.rooms.owned_room(self.owner_id, str(self.chatroom_id))
        return ChatroomType.of(room) if room else None

    @strawberry.field(description="For MESSAGE_ADDED and REPLY_FINISHED: the message as it is now.")
    async def message(self, info: Info) -> MessageType | None:
        if self.event.type not in _WITH_MESSAGE or self.event.message_id is None:
            return None
        messages = info.context.services.messages
        message = await messages.owned_message(self.owner_id, str(self.event.message_id))
        return MessageType.of(message) if message else None

    @classmethod
    def of(cls, event: RoomEvent, owner_id: uuid.UUID) -> ChatroomEvent:
        return cls(
            type=event.type,
            chatroom_id=strawberry.ID(str(event.chatroom_id)),
            at=event.at,
            event=event,
            owner_id=owner_id,
        )
