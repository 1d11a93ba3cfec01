"""Shipping the decision log to a SIEM: each sink follows the file from a durable
cursor and delivers every record at least once, in order (``shipper``), in a
format (``formats/``: opa, ocsf, ecs) over a transport (``sinks/``: syslog,
http, file); ``settings`` parses ``decision_log.sinks``."""
