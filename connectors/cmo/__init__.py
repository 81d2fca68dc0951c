"""The contract manufacturer (CMO): slots, receipt, manufacturing, QC, release/OOS over REST, and the
nightly batch-record CSV export dropped in a directory."""
