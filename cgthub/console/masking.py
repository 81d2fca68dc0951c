"""A quarantined payload as an operator may read it: decoded, with anything that can name a patient masked.

Masking is by position and by name, never by guessing at content: in HL7 every component of the
patient, next-of-kin, guarantor and insurance segments is masked except its set id; in JSON, XML
and CSV every value under a key, tag or column whose name can carry identity (name, birth date,
MRN, address, phone, ...) is masked. What is left is what an operator needs to fix a mapping: the
message's structure, codes, dates of events and identifiers of orders and material.
"""

from __future__ import annotations

import csv
import io
import json
import re
from typing import Any

from cgthub.pseudonym import mask

_HL7_PERSON_SEGMENTS = frozenset({"PID", "PD1", "NK1", "GT1", "IN1", "IN2", "MRG", "PV1", "NTE"})
_PHI_NAME = re.compile(
    r"(name|given|family|first|last|middle|birth|dob|mrn|ssn|address|street|city|zip|postal|phone|"
    r"email|mobile|contact|patient_id|patientid|medical_record|insurance|gender|sex)",
    re.IGNORECASE,
)
MASK = "***"


def masked_payload(payload: bytes, content_type: str) -> str:
    """The payload as text with patient-identifying values replaced by ***."""
    text = payload.decode("utf-8", errors="replace")
    stripped = text.lstrip("\x0b \n")
    try:
        if stripped.startswith("MSH"):
            return _hl7(stripped)
        if "json" in content_type or stripped[:1] in "[{":
            return json.dumps(_json(json.loads(text)), indent=2, sort_keys=True)
        if "xml" in content_type or stripped.startswith("<"):
            return _xml(text)
        if "csv" in content_type:
            return _csv(text)
    except (ValueError, csv.Error):
        pass
    return f"(not shown: {mask(text)} of {content_type} that the console cannot mask by structure)"


def masked_by_name(value: Any) -> Any:
    """A structure (a quarantine entry's details) with values under identity-naming keys masked."""
    return _json(value)


def _hl7(text: str) -> str:
    lines = []
    for segment in re.split(r"\r\n|\r|\n", text.strip("\x1c\r\n")):
        fields = segment.split("|")
        if fields[0] in _HL7_PERSON_SEGMENTS:
            fields = fields[:2] + [MASK if value else "" for value in fields[2:]]
        lines.append("|".join(fields))
    return "\n".join(lines)


def _json(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _json(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_json(v, key) for v in value]
    if key and _PHI_NAME.search(key) and value not in (None, ""):
        return MASK
    return value


def _xml(text: str) -> str:
    def hide(match: re.Match[str]) -> str:
        return f"<{match.group(1)}{match.group(2)}>{MASK}</{match.group(3)}>"

    pattern = re.compile(r"<([\w:.-]*?(?:" + _PHI_NAME.pattern[1:-1] + r")[\w:.-]*)([^>]*)>[^<]+</([^>]+)>", re.I)
    return pattern.sub(hide, text)


def _csv(text: str) -> str:
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        return ""
    header, hidden = rows[0], {i for i, name in enumerate(rows[0]) if _PHI_NAME.search(name)}
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for row in rows[1:]:
        writer.writerow([MASK if i in hidden and v else v for i, v in enumerate(row)])
    return out.getvalue()
