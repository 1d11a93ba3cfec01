"""The reverse proxy: identity, decision, forwarding, logs."""
