"""Browser sign-in: the OIDC flow, its relying party, the session cookie and the gateway's pages."""
