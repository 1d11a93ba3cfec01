"""State every replica shares, in Redis: revocation, rate limits, lockouts, risk signals."""
