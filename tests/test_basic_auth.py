"""khan/auth.py's BasicAuth against real bcrypt: an unknown user costs as much as a wrong password, whatever
cost the configured hashes use."""

from __future__ import annotations

import asyncio
import base64
import time

import bcrypt

from khan.auth import BasicAuth, unknown_user_hash


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
            assert not await auth.check(credentials(user, f"wrong {attempt}"))
            times.append(time.monotonic() - started)
        return min(times)

    async def measure() -> tuple[float, float]:
        return await slowest_of_fastest("prometheus"), await slowest_of_fastest("nobody")

    known, unknown = asyncio.run(measure())
    print(f"wrong password {known * 1000:.0f} ms, unknown user {unknown * 1000:.0f} ms")
    assert 0.6 < unknown / known < 1.6
