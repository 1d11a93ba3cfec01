"""Client certificates (mTLS): which trusted CA issued one (cas.py), the issuer
its identity is scoped by, and whom it names (subject.py)."""
