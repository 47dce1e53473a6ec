"""The fake Gemini speaks what the real SDK expects (so the other tests mean something)."""

from __future__ import annotations

import pytest
from google import genai
from google.genai import errors, types

from gemini_graphql.testing.fakes.gemini import API_KEY, Script


def client(url: str, key: str = API_KEY) -> genai.Client:
    return genai.Client(
        api_key=key,
        http_options=types.HttpOptions(
            base_url=url, api_version="v1beta", retry_options=types.HttpRetryOptions(attempts=1)
        ),
    )


async def test_generate_content_and_stream(fake_gemini) -> None:
    fake, url = fake_gemini
    sdk = client(url)
    fake.script(Script(chunks=["a", "b"]), Script(chunks=["x", "y", "z"]))
    whole = await sdk.aio.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert whole.text == "ab" and whole.response_id
    pieces = [
        chunk.text
        async for chunk in await sdk.aio.models.generate_content_stream(
            model="gemini-2.5-flash", contents="hi"
        )
    ]
    assert pieces == ["x", "y", "z"]
    assert [r.method for r in fake.requests] == ["generateContent", "streamGenerateContent"]
    assert fake.requests[0].path == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert fake.requests[1].body["contents"] == [{"parts": [{"text": "hi"}], "role": "user"}]
    await sdk.aio.aclose()


@pytest.mark.parametrize(
    ("status", "error_type"), [(429, errors.ClientError), (503, errors.ServerError)]
)
async def test_errors_have_googles_shape(fake_gemini, status: int, error_type: type) -> None:
    fake, url = fake_gemini
    fake.script(Script(status=status))
    sdk = client(url)
    with pytest.raises(error_type) as caught:
        await sdk.aio.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert caught.value.code == status
    await sdk.aio.aclose()


async def test_mid_stream_error_and_wrong_key(fake_gemini) -> None:
    fake, url = fake_gemini
    fake.script(Script(chunks=["a", "b", "c"], error_after=1))
    sdk = client(url)
    received = []
    with pytest.raises(errors.ServerError):
        async for chunk in await sdk.aio.models.generate_content_stream(model="m", contents="hi"):
            received.append(chunk.text)
    assert received == ["a"]
    with pytest.raises(errors.ClientError) as caught:
        await client(url, key="wrong").aio.models.generate_content(model="m", contents="hi")
    assert caught.value.code == 403
    await sdk.aio.aclose()
