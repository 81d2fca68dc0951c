"""A hospital that sends its HL7 v2 feed: for each patient an ORM^O01 apheresis order, an SIU^S12
booking, an ORU^R01 collection report with the ISBT 128 DIN, and later an infusion order; over
MLLP (waiting for each ACK, like a real interface engine) or as an FHS/BHS batch file."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

from cgthub.hl7.mllp import FrameDecoder, frame
from cgthub.identifiers import mod37_2_check


def _din(n: int) -> str:
    body = f"W123426{n:06d}"
    return body + mod37_2_check(body)


def feed(patients: range, *, site: str = "US-BOS-01") -> Iterator[bytes]:
    """The messages, patient after patient, in the order the hospital would send them."""
    for n in patients:
        pid = f"PID|1||MRN{n:08d}^^^{site}^MR~CHW123426{n:06d}^^^COI^PN||Patient^Test{n}||19700101|U"
        head = f"MSH|^~\\&|EPIC|{site}|CGTHUB|HUB|202603031120{n % 60:02d}||"
        yield (
            f"{head}ORM^O01^ORM_O01|{site}-ORM-{n}|P|2.5.1\r{pid}\r"
            f"ORC|NW|PL-{n}|FL-{n}|CRM-{n:05d}|SC||||20260303112000\r"
            f"OBR|1|PL-{n}|FL-{n}|APH^Apheresis collection^L|||20260309080000\r"
        ).encode()
        yield (
            f"{head}SIU^S12^SIU_S12|{site}-SIU-{n}|P|2.5.1\r"
            f"SCH|APT-{n}|||||^Apheresis|||||||||||||||||||BOOKED|PL-{n}\r{pid}\rRGS|1\r"
            f"AIS|1||APH^Apheresis collection|20260309080000\r"
        ).encode()
        yield (
            f"{head}ORU^R01^ORU_R01|{site}-ORU-{n}|P|2.5.1\r{pid}\r"
            f"OBR|1|PL-{n}|FL-{n}|APH^Apheresis collection^L\r"
            f"OBX|1|NM|CD3^CD3+ cells^L||4.2E9|cells|||||F|||20260309143000\r"
            f"SPM|1|{_din(n)}||PBMC^Apheresis product|||||||||||||20260309120000\r"
        ).encode()


def send_over_mllp(host: str, port: int, messages: Iterator[bytes] | list[bytes]) -> list[bytes]:
    """Send one message at a time on one connection, waiting for each ACK."""
    acks = []
    decoder = FrameDecoder()
    with socket.create_connection((host, port), timeout=30) as sock:
        for message in messages:
            sock.sendall(frame(message))
            answer: list[bytes] = []
            while not answer:
                block = sock.recv(65536)
                if not block:
                    raise ConnectionError("the hub closed the connection before acknowledging")
                answer = [a for a in decoder.feed(block) if isinstance(a, bytes)]
            acks.append(answer[0])
    return acks


def write_batch_file(path: Path, messages: Iterator[bytes] | list[bytes], *, newline: bytes = b"\r") -> Path:
    """FHS/BHS ... BTS/FTS, segments separated by `newline` (\\r, \\n or \\r\\n)."""
    body = [m.replace(b"\r", newline) for m in messages]
    header = b"FHS|^~\\&|EPIC|US-BOS-01" + newline + b"BHS|^~\\&|EPIC|US-BOS-01" + newline
    trailer = f"BTS|{len(body)}".encode() + newline + b"FTS|1" + newline
    path.write_bytes(header + b"".join(body) + trailer)
    return path


def main(argv: list[str] | None = None) -> None:
    """`python -m connectors.hospital.simulator --patients N (--port P | --batch-file PATH)`."""
    import argparse

    parser = argparse.ArgumentParser(description="Send a hospital's HL7 v2 feed for N patients.")
    parser.add_argument("--patients", type=int, default=10)
    parser.add_argument("--first", type=int, default=1, help="number of the first patient")
    parser.add_argument("--site", default="US-BOS-01")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, help="the hub's MLLP listener")
    parser.add_argument("--batch-file", type=Path, help="write an FHS/BHS batch file instead of sending")
    args = parser.parse_args(argv)
    messages = list(feed(range(args.first, args.first + args.patients), site=args.site))
    if args.batch_file is not None:
        write_batch_file(args.batch_file, messages)
        print(f"wrote {len(messages)} messages for {args.patients} patients to {args.batch_file}")
        return
    if args.port is None:
        parser.error("give --port (MLLP) or --batch-file")
    acks = send_over_mllp(args.host, args.port, messages)
    codes = [ack.split(b"\rMSA|", 1)[-1][:2].decode("ascii", "replace") for ack in acks]
    print(
        f"sent {len(messages)} messages for {args.patients} patients: "
        + ", ".join(f"{codes.count(code)} {code}" for code in sorted(set(codes)))
    )


if __name__ == "__main__":
    main()
