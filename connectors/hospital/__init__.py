"""The treatment site's side of the HL7 feed, for sandboxes: a simulator that sends realistic
feeds for N patients over MLLP (or writes them as batch files), and a receiver that ACKs the
hub's outbound status messages."""
