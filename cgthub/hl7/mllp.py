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
        # Where the next search for an end or start block begins: the bytes before it were searched
        # already, so a frame arriving in many small reads is not scanned again from its start each time.
        self._searched = 1

    def feed(self, data: bytes) -> Iterator[bytes | Oversized | Truncated]:
        self.buffer += data
        while True:
            if self._discarding and not self._skip_oversized_tail():
                return
            start = self.buffer.find(START)
            if start < 0:
                self.skipped += len(self.buffer)
                self._drop_all()
                return
            if start:
                self.skipped += start
                self._drop(start)
            end = self.buffer.find(END_BLOCK, self._searched)
            restart = self.buffer.find(START, self._searched)
            if restart > 0 and (end < 0 or restart < end):
                cut = self._take(1, restart)
                self._drop(restart)
                yield Truncated(len(cut), cut)
                continue
            if end < 0:
                if len(self.buffer) - 1 > self.max_size:
                    size = len(self.buffer) - 1
                    self._drop_all()
                    self._discarding = True
                    yield Oversized(size, self.max_size)
                else:  # an end block may be split over reads: its first byte is searched again
                    self._searched = max(1, len(self.buffer) - 1)
                return
            if end - 1 > self.max_size:
                self._drop(end + 2)
                yield Oversized(end - 1, self.max_size)
                continue
            message = self._take(1, end)
            self._drop(end + 2)
            yield message

    def _take(self, start: int, end: int) -> bytes:
        """A copy of buffer[start:end], made once (slicing a bytearray first would copy it twice)."""
        with memoryview(self.buffer) as view:
            return bytes(view[start:end])

    def _drop(self, count: int) -> None:
        del self.buffer[:count]
        self._searched = 1
        if not self.buffer:
            self._drop_all()

    def _drop_all(self) -> None:
        """Empty the buffer and give its memory back: a big frame's allocation is not kept for small ones."""
        self.buffer = bytearray()
        self._searched = 1

    def _skip_oversized_tail(self) -> bool:
        """Drop the rest of a frame already reported as oversized; False while its end has not come."""
        end, start = self.buffer.find(END_BLOCK), self.buffer.find(START)
        if start >= 0 and (end < 0 or start < end):
            self._drop(start)  # a new frame begins: the oversized one never ended
        elif end < 0:
            keep = self.buffer.endswith(END)  # the first byte of an end block split over reads
            self._drop_all()
            if keep:
                self.buffer += END
            return False
        else:
            self._drop(end + 2)
        self._discarding = False
        return True

    def unfinished(self) -> Truncated | None:
        """The frame left open when the connection ends (None if there is none)."""
        if self._discarding or not self.buffer.startswith(START):
            return None
        cut = self._take(1, len(self.buffer))
        self._drop_all()
        return Truncated(len(cut), cut)

    @property
    def pending(self) -> int:
        """Bytes held for a frame not yet complete."""
        return len(self.buffer)

    @property
    def in_frame(self) -> bool:
        """A frame has begun and not yet ended (including the unkept rest of an oversized one)."""
        return self._discarding or self.buffer.startswith(START)
