package portcullis.gateway

import rego.v1

# The decision memo (README "Decision memo"): the gateway may reuse an allow for
# a request that agrees with it on every input path listed here. Checked against
# what this package really reads when the policy loads: a read missing here (or a
# read of the whole input) turns the memo off. input.now_ns is valid_until_ns' job.
reads := [
	"/identity",
	"/route",
	"/parsed_path",
	"/signals",
	"/attributes/request/http/method",
	"/attributes/request/http/host",
	"/attributes/request/http/headers/upgrade",
	"/attributes/request/http/headers/sec-fetch-site",
	"/attributes/request/http/headers/origin",
]

# Until when an allow holds as time passes: every max_age it relied on runs out one
# nanosecond after auth_time + max_age (fresh_enough's own arithmetic), and the
# earliest wins. null: no requirement with a max_age, the clock plays no part.
default valid_until_ns := null

valid_until_ns := min(expiries) if {
	allow
	expiries := {expiry |
		some requirement in mfa_requirements
		is_number(requirement.max_age)
		expiry := ((input.identity.auth_time * 1000000000) + (requirement.max_age * 1000000000)) + 1
	}
	count(expiries) > 0
}
