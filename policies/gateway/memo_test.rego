package portcullis.gateway_memo_test

import rego.v1

import data.portcullis.gateway

now_ns := 1700000000 * 1000000000

request(path, identity, signals) := {
	"attributes": {"request": {"http": {"method": "POST", "headers": {}, "id": "t"}}},
	"parsed_path": split(trim_prefix(path, "/"), "/"),
	"parsed_query": {},
	"route": {"app": split(trim_prefix(path, "/"), "/")[0]},
	"identity": identity,
	"signals": signals,
	"now_ns": now_ns,
}

manager(amr, age) := {
	"authenticated": true,
	"subject": "manager-17",
	"groups": ["store"],
	"amr": amr,
	"acr": "phr",
	"auth_time": (now_ns / 1000000000) - age,
	"method": "bearer",
}

until(path, identity, signals) := value if {
	value := gateway.decision.valid_until_ns with input as request(path, identity, signals)
}

# A refund allowed 100 s after sign-in holds until 900 s after it, and not a nanosecond more.
test_a_refund_allow_holds_until_its_max_age_runs_out if {
	until("/pos/refunds/1", manager(["hwk"], 100), {}) == ((now_ns + (800 * 1000000000)) + 1)
}

# No requirement with a max_age: the clock plays no part.
test_a_sales_allow_does_not_read_the_clock if {
	until("/pos/sales/1", manager(["otp"], 100), {}) == null
}

# A new source address adds the 900 s phishing-resistant requirement to every POS page.
test_a_new_address_bounds_a_sales_allow_too if {
	until("/pos/sales/1", manager(["hwk"], 10), {"new_source_ip": true}) == ((now_ns + (890 * 1000000000)) + 1)
}

test_a_deny_has_no_validity if {
	until("/pos/refunds/1", object.union(manager(["otp"], 100), {"acr": "mfa"}), {}) == null
}

test_the_declared_reads_are_pointers_into_the_input if {
	every pointer in gateway.reads {
		startswith(pointer, "/")
	}
	"/identity" in gateway.reads
}
