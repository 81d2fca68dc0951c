"""The hospital's HL7 v2 feed: MLLP framing, ACKs, the listener, file-drop ingest."""
