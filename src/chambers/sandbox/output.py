"""Bounded capture of command output, and truncation with a visible marker."""

from __future__ import annotations


def marker(dropped: int) -> str:
    return f"\n[... truncated {dropped} bytes ...]\n"


class Capture:
    """Collects a stream, keeping at most `limit` bytes.

    `keep_tail=False`: stop at the limit (`overflowed` tells the caller to give up on the command).
    `keep_tail=True`: keep the first and the last half of the limit and count what was dropped in
    between, so the end of a long build log (usually the interesting part) survives.
    """

    def __init__(self, limit: int, *, keep_tail: bool) -> None:
        self.limit = limit
        self.keep_tail = keep_tail
        self.head = bytearray()
        self.tail = bytearray()
        self.dropped = 0
        self.overflowed = False

    def feed(self, chunk: bytes) -> None:
        if not self.keep_tail:
            room = self.limit - len(self.head)
            self.head.extend(chunk[: max(room, 0)])
            if len(chunk) > room:
                self.dropped += len(chunk) - max(room, 0)
                self.overflowed = True
            return
        half = self.limit // 2
        room = half - len(self.head)
        if room > 0:
            self.head.extend(chunk[:room])
            chunk = chunk[room:]
        if not chunk:
            return
        self.tail.extend(chunk)
        excess = len(self.tail) - (self.limit - half)
        if excess > 0:
            self.dropped += excess
            del self.tail[:excess]

    def text(self) -> str:
        """The captured bytes as text (undecodable bytes replaced), with a marker where bytes were dropped."""
        head = self.head.decode("utf-8", errors="replace")
        if not self.dropped:
            return head + self.tail.decode("utf-8", errors="replace")
        return head + marker(self.dropped) + self.tail.decode("utf-8", errors="replace")

    def data(self) -> bytes:
        return bytes(self.head + self.tail)


def truncate_text(text: str, limit: int) -> tuple[str, bool]:
    """Cut `text` to about `limit` UTF-8 bytes, keeping its head and tail around a marker."""
    encoded = text.encode("utf-8", errors="replace")
    if len(encoded) <= limit:
        return text, False
    capture = Capture(limit, keep_tail=True)
    capture.feed(encoded)
    return capture.text(), True
