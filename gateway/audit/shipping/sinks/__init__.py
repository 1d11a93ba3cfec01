"""Sink transports, one module per kind: syslog (RFC 5424 over TCP/TLS), http
(OPA's decision-log API or Splunk HEC), file."""
