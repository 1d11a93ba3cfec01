"""The decision log: ``chain`` (format, hashing, signatures), ``writer`` (the
gateway's DecisionLog), ``redaction`` (what an event may hold), ``reader``
(reading and verifying: what every command that reads the log imports)."""
