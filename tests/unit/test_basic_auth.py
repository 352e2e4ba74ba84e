"""khan/auth.py's BasicAuth against real bcrypt: an unknown user costs as much as a wrong password, whatever
cost the configured hashes use."""

from __future__ import annotations

import asyncio
import base64
import time

import bcrypt

from khan.web.auth import BasicAuth, Decision, unknown_user_hash


def credentials(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def hashed(password: str, cost: int) -> bytes:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=cost))


def test_the_unknown_user_hash_has_the_highest_configured_cost() -> None:
    users = [hashed("a", 4), hashed("b", 11), hashed("c", 5)]
    assert unknown_user_hash(users).startswith(b"$2b$11$")
    assert unknown_user_hash([b"$2y$06$" + hashed("d", 6)[7:]]).startswith(b"$2b$06$")
    assert unknown_user_hash(users) != unknown_user_hash(users)  # a fresh random password each start


def test_an_unknown_user_takes_as_long_as_a_wrong_password() -> None:
    """Cost 12, not the old dummy hash's fixed 10: before, an unknown user answered 4 times faster."""
    auth = BasicAuth({"prometheus": hashed("right", 12)})

    async def slowest_of_fastest(user: str) -> float:
        times = []
        for attempt in range(3):
            started = time.monotonic()
            assert await auth.check(credentials(user, f"wrong {attempt}")) is Decision.UNAUTHENTICATED
            times.append(time.monotonic() - started)
        return min(times)

    async def measure() -> tuple[float, float]:
        return await slowest_of_fastest("prometheus"), await slowest_of_fastest("nobody")

    known, unknown = asyncio.run(measure())
    print(f"wrong password {known * 1000:.0f} ms, unknown user {unknown * 1000:.0f} ms")
    assert 0.6 < unknown / known < 1.6


def test_unknown_credentials_never_queue_and_a_known_password_never_waits() -> None:
    """Both bcrypt slots taken by wrong passwords: a third unknown credential is BUSY at once, a right password
    checked before is ALLOWED at once, and a wrong password repeated is refused without bcrypt."""
    auth = BasicAuth({"prometheus": hashed("right", 12)})

    async def scenario() -> None:
        assert await auth.check(credentials("prometheus", "right")) is Decision.ALLOWED
        assert await auth.check(credentials("prometheus", "wrong")) is Decision.UNAUTHENTICATED
        slow = [asyncio.create_task(auth.check(credentials("x", f"guess {n}"))) for n in range(2)]
        await asyncio.sleep(0.01)
        started = time.monotonic()
        assert await auth.check(credentials("y", "another guess")) is Decision.BUSY
        assert await auth.check(credentials("prometheus", "right")) is Decision.ALLOWED
        assert await auth.check(credentials("prometheus", "wrong")) is Decision.UNAUTHENTICATED  # remembered
        assert time.monotonic() - started < 0.02
        assert [await task for task in slow] == [Decision.UNAUTHENTICATED] * 2
        assert await auth.check(credentials("y", "another guess")) is Decision.UNAUTHENTICATED  # a slot again

    asyncio.run(scenario())
