"""What a request must pass before anything trusts it: its headers (caps, UTF-8, Host),
its path (one reading only), and which client headers a backend may believe."""
