"""The fake upstream's own rules that the benchmarks rely on."""

from __future__ import annotations

import httpx

from tests.support.fake_upstream import FakeUpstream, Reply, Tokens, Usage


def completion(fake: FakeUpstream, prompt: str) -> dict[str, object]:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": prompt}]}
    response = httpx.post(f"{fake.openai_base_url}/chat/completions", json=body, timeout=10)
    assert response.status_code == 200, response.text
    answer: dict[str, object] = response.json()
    return answer


def test_a_prompt_can_ask_the_default_reply_for_more_tokens() -> None:
    with FakeUpstream(Reply([Tokens(3, "t ")], usage=Usage(10, 3))) as fake:
        plain = completion(fake, "hello")
        sized = completion(fake, "a long answer please [fake-tokens=40]")
        fake.script(Reply([Tokens(2, "s ")]))
        scripted = completion(fake, "scripted replies keep their own length [fake-tokens=40]")
    assert plain["choices"][0]["message"]["content"] == "t " * 3  # type: ignore[index]
    assert sized["choices"][0]["message"]["content"] == "t " * 40  # type: ignore[index]
    assert sized["usage"]["completion_tokens"] == 40  # type: ignore[index]
    assert scripted["choices"][0]["message"]["content"] == "s " * 2  # type: ignore[index]
