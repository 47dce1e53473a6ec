"""One-time codes: the login flow and every way a code can be refused."""

from __future__ import annotations

import asyncio
import hashlib

import asyncpg

from tests.auth_flows import ME, SEND_OTP, SIGNUP, VERIFY_OTP, error_codes, login, send_code, signup
from tests.conftest import FakeClock, GraphQLClient, RecordingSms, new_number


async def verify(gql: GraphQLClient, number: str, code: str) -> dict:
    body = await gql(VERIFY_OTP, {"input": {"mobileNumber": number, "code": code}})
    return body["data"]["verifyOtp"]


def wrong(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


async def test_signup_send_verify_and_me(gql: GraphQLClient, sms: RecordingSms) -> None:
    user = await login(gql, sms, name="Ada")
    me = (await gql(ME, token=user.token))["data"]["me"]
    assert me["id"] == user.user_id
    assert me["mobileNumber"] == user.number
    assert me["name"] == "Ada"
    assert me["tier"] == "BASIC"
    assert me["usage"]["used"] == 0 and me["usage"]["limit"] == 5 and me["usage"]["remaining"] == 5
    assert me["usage"]["resetsAt"].startswith(me["usage"]["resetsAt"][:10])
    assert me["usage"]["resetsAt"][11:19] == "00:00:00"


async def test_token_payload_shape(gql: GraphQLClient, sms: RecordingSms) -> None:
    number = await signup(gql)
    await send_code(gql, number)
    payload = await verify(gql, number, sms.last_code(number))
    assert payload["tokenType"] == "Bearer"
    assert payload["expiresIn"] == 3600
    assert payload["accessToken"].count(".") == 2


async def test_code_is_stored_only_as_keyed_hash(
    gql: GraphQLClient, sms: RecordingSms, pg: asyncpg.Pool
) -> None:
    number = await signup(gql)
    await send_code(gql, number)
    code = sms.last_code(number)
    row = await pg.fetchrow("SELECT * FROM otps WHERE mobile_number = $1", number)
    stored = " ".join(str(value) for value in row.values())
    assert code not in stored
    assert row["code_hash"] != hashlib.sha256(code.encode()).hexdigest()  # keyed, not a bare hash


async def test_dev_code_only_in_dev_mode(make_client, sms: RecordingSms) -> None:
    test_gql = GraphQLClient(await make_client())
    number = await signup(test_gql)
    assert (await send_code(test_gql, number))["devCode"] is None

    dev_gql = GraphQLClient(await make_client(app_env="dev"))
    dev_number = await signup(dev_gql)
    sent = await send_code(dev_gql, dev_number)
    assert sent["devCode"] == sms.last_code(dev_number)


async def test_unknown_number_gets_the_same_answer_and_no_sms(
    gql: GraphQLClient, sms: RecordingSms
) -> None:
    known = await signup(gql)
    unknown = new_number()
    known_answer = await send_code(gql, known)
    unknown_answer = await send_code(gql, unknown)
    assert set(known_answer) == set(unknown_answer)
    assert known_answer["sent"] is unknown_answer["sent"] is True
    assert known_answer["errors"] == unknown_answer["errors"] == []
    assert unknown_answer["expiresAt"] is not None
    assert [number for number, _ in sms.sent] == [known]


async def test_verify_for_number_without_account_is_invalid(gql: GraphQLClient) -> None:
    number = new_number()
    await send_code(gql, number)
    payload = await verify(gql, number, "123456")
    assert error_codes(payload) == [("OTP_INVALID", "code")]
    assert payload["accessToken"] is None


async def test_wrong_code(gql: GraphQLClient, sms: RecordingSms) -> None:
    number = await signup(gql)
    await send_code(gql, number)
    payload = await verify(gql, number, wrong(sms.last_code(number)))
    assert error_codes(payload) == [("OTP_INVALID", "code")]
    assert payload["accessToken"] is None and payload["user"] is None


async def test_malformed_code_is_invalid_input_and_costs_no_try(
    gql: GraphQLClient, sms: RecordingSms, pg: asyncpg.Pool
) -> None:
    number = await signup(gql)
    await send_code(gql, number)
    for bad in ["", "12345", "1234567", "abcdef", "１２３４５６", "1" * 10_000]:
        payload = await verify(gql, number, bad)
        assert error_codes(payload) == [("INVALID_INPUT", "code")], bad
    assert await pg.fetchval("SELECT attempts FROM otps WHERE mobile_number = $1", number) == 0
    assert (await verify(gql, number, sms.last_code(number)))["errors"] == []


async def test_expired_code(gql: GraphQLClient, sms: RecordingSms, clock: FakeClock) -> None:
    number = await signup(gql)
    await send_code(gql, number)
    clock.advance(minutes=10, seconds=1)
    payload = await verify(gql, number, sms.last_code(number))
    assert error_codes(payload) == [("OTP_INVALID", "code")]


async def test_code_valid_until_ten_minutes(
    gql: GraphQLClient, sms: RecordingSms, clock: FakeClock
) -> None:
    number = await signup(gql)
    await send_code(gql, number)
    clock.advance(minutes=9, seconds=59)
    assert (await verify(gql, number, sms.last_code(number)))["errors"] == []


async def test_code_is_single_use(gql: GraphQLClient, sms: RecordingSms) -> None:
    number = await signup(gql)
    await send_code(gql, number)
    code = sms.last_code(number)
    assert (await verify(gql, number, code))["errors"] == []
    assert error_codes(await verify(gql, number, code)) == [("OTP_INVALID", "code")]


async def test_parallel_use_of_one_code_logs_in_once(gql: GraphQLClient, sms: RecordingSms) -> None:
    number = await signup(gql)
    await send_code(gql, number)
    code = sms.last_code(number)
    results = await asyncio.gather(*(verify(gql, number, code) for _ in range(5)))
    assert sum(1 for payload in results if payload["accessToken"]) == 1


async def test_password_reset_code_cannot_log_in(gql: GraphQLClient, sms: RecordingSms) -> None:
    number = await signup(gql)
    await send_code(gql, number, purpose="PASSWORD_RESET")
    payload = await verify(gql, number, sms.last_code(number))
    assert error_codes(payload) == [("OTP_INVALID", "code")]


async def test_only_the_newest_code_counts(gql: GraphQLClient, sms: RecordingSms) -> None:
    number = await signup(gql)
    await send_code(gql, number)
    first = sms.last_code(number)
    await send_code(gql, number)
    second = sms.last_code(number)
    if first != second:
        assert error_codes(await verify(gql, number, first)) == [("OTP_INVALID", "code")]
    assert (await verify(gql, number, second))["errors"] == []


async def test_fifth_wrong_try_kills_the_code(gql: GraphQLClient, sms: RecordingSms) -> None:
    number = await signup(gql)
    await send_code(gql, number)
    code = sms.last_code(number)
    for _ in range(4):
        assert error_codes(await verify(gql, number, wrong(code))) == [("OTP_INVALID", "code")]
    assert error_codes(await verify(gql, number, wrong(code))) == [
        ("OTP_ATTEMPTS_EXCEEDED", "code")
    ]
    # Dead now, even for the right code.
    assert error_codes(await verify(gql, number, code)) == [("OTP_ATTEMPTS_EXCEEDED", "code")]
    # A new code works.
    await send_code(gql, number)
    assert (await verify(gql, number, sms.last_code(number)))["errors"] == []


async def test_parallel_wrong_guesses_get_five_tries(
    gql: GraphQLClient, sms: RecordingSms, pg: asyncpg.Pool
) -> None:
    number = await signup(gql)
    await send_code(gql, number)
    code = sms.last_code(number)
    guesses = [f"{(int(code) + i) % 1_000_000:06d}" for i in range(1, 11)]
    results = await asyncio.gather(*(verify(gql, number, guess) for guess in guesses))
    codes = sorted(payload["errors"][0]["code"] for payload in results)
    assert codes.count("OTP_INVALID") == 4
    assert codes.count("OTP_ATTEMPTS_EXCEEDED") == 6
    assert await pg.fetchval("SELECT attempts FROM otps WHERE mobile_number = $1", number) == 5
    assert error_codes(await verify(gql, number, code)) == [("OTP_ATTEMPTS_EXCEEDED", "code")]


async def test_five_codes_per_hour(gql: GraphQLClient, clock: FakeClock) -> None:
    number = await signup(gql)
    for _ in range(5):
        assert (await send_code(gql, number))["sent"] is True
    sixth = await send_code(gql, number)
    assert sixth["sent"] is False
    assert error_codes(sixth) == [("OTP_THROTTLED", "mobileNumber")]
    clock.advance(hours=1, seconds=1)
    assert (await send_code(gql, number))["sent"] is True


async def test_send_limit_holds_in_parallel(gql: GraphQLClient, pg: asyncpg.Pool) -> None:
    number = await signup(gql)
    results = await asyncio.gather(*(send_code(gql, number) for _ in range(10)))
    assert sum(1 for payload in results if payload["sent"]) == 5
    assert (
        sum(1 for payload in results if error_codes(payload) == [("OTP_THROTTLED", "mobileNumber")])
        == 5
    )
    assert await pg.fetchval("SELECT count(*) FROM otps WHERE mobile_number = $1", number) == 5


async def test_send_limit_is_the_same_for_unknown_numbers(gql: GraphQLClient) -> None:
    number = new_number()
    for _ in range(5):
        assert (await send_code(gql, number))["sent"] is True
    assert error_codes(await send_code(gql, number)) == [("OTP_THROTTLED", "mobileNumber")]


async def test_numbers_are_normalised(gql: GraphQLClient, sms: RecordingSms) -> None:
    body = await gql(SIGNUP, {"input": {"mobileNumber": "+1 (415) 555-0142"}})
    assert body["data"]["signup"]["user"]["mobileNumber"] == "+14155550142"
    await send_code(gql, "0014155550142")
    payload = await verify(gql, "+1-415-555-0142", sms.last_code("+14155550142"))
    assert payload["errors"] == [] and payload["user"]["mobileNumber"] == "+14155550142"


async def test_invalid_numbers(gql: GraphQLClient, pg: asyncpg.Pool) -> None:
    bad_numbers = [
        "",
        "5550102030",  # national format: refused, not guessed
        "+0155501020",  # country code cannot start with 0
        "+1234567",  # 7 digits
        "+15550102030",  # E.164-shaped, but +1 has no area code 555
        "+442079460958",  # a landline: no text message would reach it
        "+1234567890123456",  # 16 digits
        "+1555abc0203",
        "+١٢٣٤٥٦٧٨٩٠",  # non-ASCII digits
        "+" + "1" * 500,
        "1; DROP TABLE users",
    ]
    for bad in bad_numbers:
        body = await gql(SEND_OTP, {"input": {"mobileNumber": bad}})
        payload = body["data"]["sendOtp"]
        assert payload["sent"] is False, bad
        assert error_codes(payload) == [("INVALID_INPUT", "mobileNumber")], bad
    assert await pg.fetchval("SELECT count(*) FROM otps") == 0
