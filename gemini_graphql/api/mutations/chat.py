from __future__ import annotations

import strawberry

from gemini_graphql.api.context import Info
from gemini_graphql.api.errors import payload_or_errors
from gemini_graphql.api.types.chat import (
    ChatroomType,
    CreateChatroomInput,
    CreateChatroomPayload,
    DeleteChatroomInput,
    DeleteChatroomPayload,
    EditMessageInput,
    MessageType,
    RegenerateReplyInput,
    SelectVersionInput,
    SelectVersionPayload,
    SendMessageInput,
    SendMessagePayload,
    StopReplyInput,
    StopReplyPayload,
    UpdateChatroomInput,
    UpdateChatroomPayload,
)
from gemini_graphql.chat.rooms import KEEP, RoomChanges


def _kept(value: str | None) -> object:
    return KEEP if value is strawberry.UNSET else value


@strawberry.type
class ChatMutations:
    @strawberry.mutation(description="Start a new chatroom.")
    async def create_chatroom(
        self, info: Info, input: CreateChatroomInput
    ) -> CreateChatroomPayload:
        user = await info.context.user()
        created = info.context.services.rooms.create(
            user.id, input.title, input.description, input.system_instruction
        )
        return await payload_or_errors(
            CreateChatroomPayload,
            created,
            lambda room: CreateChatroomPayload(chatroom=ChatroomType.of(room)),
        )

    @strawberry.mutation(
        description="Rename a chatroom, or change its description or instruction. Omitted "
        "fields stay as they are; null clears description or systemInstruction."
    )
    async def update_chatroom(
        self, info: Info, input: UpdateChatroomInput
    ) -> UpdateChatroomPayload:
        user = await info.context.user()
        changes = RoomChanges(
            title=_kept(input.title),  # type: ignore[arg-type]
            description=_kept(input.description),  # type: ignore[arg-type]
            system_instruction=_kept(input.system_instruction),  # type: ignore[arg-type]
        )
        updated = info.context.services.rooms.update(user.id, input.id, changes)
        return await payload_or_errors(
            UpdateChatroomPayload,
            updated,
            lambda room: UpdateChatroomPayload(chatroom=ChatroomType.of(room)),
        )

    @strawberry.mutation(
        description="Delete a chatroom and its messages, stopping its replies in progress. "
        "Not undone; used quota is not given back."
    )
    async def delete_chatroom(
        self, info: Info, input: DeleteChatroomInput
    ) -> DeleteChatroomPayload:
        user = await info.context.user()
        deleted = info.context.services.rooms.delete(user.id, input.id)
        return await payload_or_errors(
            DeleteChatroomPayload,
            deleted,
            lambda room_id: DeleteChatroomPayload(deleted_id=strawberry.ID(str(room_id))),
        )

    @strawberry.mutation(
        description="Send a message; returns at once with the PENDING reply to subscribe to."
    )
    async def send_message(self, info: Info, input: SendMessageInput) -> SendMessagePayload:
        user = await info.context.user()
        sent = info.context.services.messages.send(user.id, input.chatroom_id, input.content)
        return await payload_or_errors(SendMessagePayload, sent, SendMessagePayload.of)

    @strawberry.mutation(
        description="Stop a reply being written; returns once it is STOPPED, with exactly the "
        "text streamed so far. A reply already finished comes back unchanged."
    )
    async def stop_reply(self, info: Info, input: StopReplyInput) -> StopReplyPayload:
        user = await info.context.user()
        stopped = info.context.services.conversation.stop(user.id, input.message_id)
        return await payload_or_errors(
            StopReplyPayload, stopped, lambda m: StopReplyPayload(message=MessageType.of(m))
        )

    @strawberry.mutation(
        description="Ask again: a new version of a finished reply (COMPLETE, FAILED or "
        "STOPPED), answering the same message. Counts against the daily quota."
    )
    async def regenerate_reply(self, info: Info, input: RegenerateReplyInput) -> SendMessagePayload:
        user = await info.context.user()
        sent = info.context.services.conversation.regenerate(user.id, input.message_id)
        return await payload_or_errors(SendMessagePayload, sent, SendMessagePayload.of)

    @strawberry.mutation(
        description="A new version of one of your messages, with its own reply; its branch "
        "becomes current. Counts against the daily quota."
    )
    async def edit_message(self, info: Info, input: EditMessageInput) -> SendMessagePayload:
        user = await info.context.user()
        sent = info.context.services.conversation.edit(user.id, input.message_id, input.content)
        return await payload_or_errors(SendMessagePayload, sent, SendMessagePayload.of)

    @strawberry.mutation(
        description="Make a version's branch current (down to its most recently created leaf)."
    )
    async def select_version(self, info: Info, input: SelectVersionInput) -> SelectVersionPayload:
        user = await info.context.user()
        selected = info.context.services.conversation.select_version(user.id, input.message_id)
        return await payload_or_errors(
            SelectVersionPayload,
            selected,
            lambda room: SelectVersionPayload(chatroom=ChatroomType.of(room)),
        )
