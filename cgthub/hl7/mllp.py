"""MLLP framing (HL7's Minimal Lower Layer Protocol): <VT> message <FS><CR>.

`FrameDecoder` takes bytes as they arrive (several frames in one read, a frame split over reads,
garbage between frames) and yields complete messages, `Oversized` for a frame over the limit, or
`Truncated` for a frame a new start byte cut short; it resynchronizes on the next start byte.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

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
    """A frame that a new start byte (or the end of the connection) interrupted before its end."""

    size: int
    payload: bytes = field(default=b"", compare=False, repr=False)  # what arrived, to archive


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
                cut = bytes(self.buffer[1:restart])
                del self.buffer[:restart]
                yield Truncated(len(cut), cut)
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

    def unfinished(self) -> Truncated | None:
        """The frame left open when the connection ends (None if there is none)."""
        if self._discarding or not self.buffer.startswith(START):
            return None
        cut = bytes(self.buffer[1:])
        self.buffer.clear()
        return Truncated(len(cut), cut)

    @property
    def pending(self) -> int:
        return len(self.buffer)
