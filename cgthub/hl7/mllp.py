"""MLLP framing (HL7's Minimal Lower Layer Protocol): <VT> message <FS><CR>.

`FrameDecoder` takes bytes as they arrive (several frames in one read, a frame split over reads,
garbage between frames) and yields complete messages, `Oversized` for a frame over the limit, or
`Truncated` for a frame a new start byte cut short; it resynchronizes on the next start byte.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

START, END, CR = b"\x0b", b"\x1c", b"\x0d"
END_BLOCK = END + CR


def frame(message: bytes) -> bytes:
    return START + message + END_BLOCK


@dataclass(frozen=True)
class Oversized:
    size: int
    limit: int


@dataclass(frozen=True)
class Truncated:
    """A frame that a new start byte interrupted before its end."""

    size: int


class FrameDecoder:
    def __init__(self, max_size: int = 1024 * 1024) -> None:
        self.max_size = max_size
        self.buffer = bytearray()
        self.skipped = 0  # garbage bytes seen outside frames
        self._discarding = False

    def feed(self, data: bytes) -> Iterator[bytes | Oversized | Truncated]:
        self.buffer += data
        while True:
            if self._discarding and not self._skip_oversized_tail():
                return
            start = self.buffer.find(START)
            if start < 0:
                self.skipped += len(self.buffer)
                self.buffer.clear()
                return
            if start:
                self.skipped += start
                del self.buffer[:start]
            end = self.buffer.find(END_BLOCK, 1)
            restart = self.buffer.find(START, 1)
            if restart > 0 and (end < 0 or restart < end):
                del self.buffer[:restart]
                yield Truncated(restart - 1)
                continue
            if end < 0:
                if len(self.buffer) - 1 > self.max_size:
                    size = len(self.buffer) - 1
                    self.buffer.clear()
                    self._discarding = True
                    yield Oversized(size, self.max_size)
                return
            message = bytes(self.buffer[1:end])
            del self.buffer[: end + 2]
            if len(message) > self.max_size:
                yield Oversized(len(message), self.max_size)
                continue
            yield message

    def _skip_oversized_tail(self) -> bool:
        """Drop the rest of a frame already reported as oversized; False while its end has not come."""
        end, start = self.buffer.find(END_BLOCK), self.buffer.find(START)
        if start >= 0 and (end < 0 or start < end):
            del self.buffer[:start]  # a new frame begins: the oversized one never ended
        elif end < 0:
            self.buffer.clear()
            return False
        else:
            del self.buffer[: end + 2]
        self._discarding = False
        return True

    @property
    def pending(self) -> int:
        return len(self.buffer)
