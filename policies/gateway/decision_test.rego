package portcullis.gateway_test

import rego.v1

import data.portcullis.gateway

now_ns := 1700000000 * 1000000000

# A request as the gateway builds it: path "/a/b" gives parsed_path ["a", "b"].
request(method, path, identity) := {
	"attributes": {"request": {"http": {
		"method": method,
		"host": "gateway.example",
		"path": path,
		"scheme": "https",
		"headers": {},
		"id": "test",
	}}},
	"parsed_path": split(trim_prefix(path, "/"), "/"),
	"parsed_query": {},
	"route": {"app": split(trim_prefix(path, "/"), "/")[0]},
	"identity": identity,
	"now_ns": now_ns,
}

user(groups, amr, age) := {
	"authenticated": true,
	"subject": "alice",
	"email": "alice@example.com",
	"groups": groups,
	"amr": amr,
	"acr": "pwd",
	"auth_time": (now_ns / 1000000000) - age,
	"method": "bearer",
}

decide(method, path, identity) := d if {
	d := gateway.decision with input as request(method, path, identity)
}

test_warehouse_worker_with_otp_reaches_wms if {
	d := decide("GET", "/wms/stock", user(["warehouse"], ["pwd", "otp"], 60))
	d.allow
	d.http_status == 200
	d.reasons == []
	d.step_up == null
}

test_allowed_decision_tells_the_upstream_app_and_classification if {
	d := decide("GET", "/pos/sales", user(["store"], ["pwd", "otp"], 60))
	d.headers == {"x-portcullis-app": "pos", "x-portcullis-classification": "pci"}
}

test_wms_without_mfa_is_denied_with_step_up if {
	d := decide("GET", "/wms/stock", user(["warehouse"], ["pwd"], 60))
	not d.allow
	d.http_status == 403
	d.step_up == {"acr": "mfa", "max_age": null}
	d.reasons == ["requires MFA with one of: fido, hwk, mfa, otp, swk"]
}

test_wrong_group_is_denied_without_step_up if {
	d := decide("GET", "/wms/stock", user(["store"], ["pwd", "otp"], 60))
	not d.allow
	d.http_status == 403
	d.step_up == null
	d.reasons == ["requires membership in one of: warehouse"]
}

test_missing_group_and_mfa_gives_both_reasons_and_no_step_up if {
	d := decide("GET", "/wms/stock", user([], ["pwd"], 60))
	count(d.reasons) == 2
	d.step_up == null
}

test_wms_admin_needs_the_wms_admin_group if {
	d := decide("GET", "/wms/admin/users", user(["warehouse"], ["otp"], 60))
	not d.allow
	d.reasons == ["requires membership in one of: wms-admin"]
}

test_wms_admin_with_both_groups_is_allowed if {
	decide("POST", "/wms/admin/users", user(["warehouse", "wms-admin"], ["otp"], 60)).allow
}

test_wms_admin_group_alone_is_not_enough if {
	not decide("GET", "/wms/admin/users", user(["wms-admin"], ["otp"], 60)).allow
}

test_wms_admin_override_ignores_case_of_the_path if {
	not decide("GET", "/wms/ADMIN/users", user(["warehouse"], ["otp"], 60)).allow
}

test_store_staff_with_otp_reach_pos_sales if {
	decide("GET", "/pos/sales/today", user(["store"], ["otp"], 3600)).allow
}

test_pos_refund_requires_phishing_resistant_mfa if {
	d := decide("POST", "/pos/refunds/42", user(["store"], ["pwd", "otp"], 60))
	not d.allow
	d.http_status == 403
	d.step_up == {"acr": "phr", "max_age": 900}
	d.reasons == ["requires MFA with one of: fido, hwk"]
}

test_pos_refund_requires_fresh_mfa if {
	d := decide("POST", "/pos/refunds/42", user(["store"], ["hwk"], 901))
	not d.allow
	d.step_up == {"acr": "phr", "max_age": 900}
	d.reasons == ["requires sign-in within the last 900 s; last sign-in was 901 s ago"]
}

test_pos_refund_freshness_is_exact_to_the_nanosecond if {
	at_limit := request("POST", "/pos/refunds/42", user(["store"], ["hwk"], 900))
	gateway.decision.allow with input as at_limit
	one_ns_late := object.union(at_limit, {"now_ns": now_ns + 1})
	not gateway.decision.allow with input as one_ns_late
}

test_pos_refund_with_fresh_hardware_key_is_allowed if {
	decide("POST", "/pos/refunds/42", user(["store"], ["pwd", "hwk"], 899)).allow
}

test_pos_refund_with_fresh_fido_is_allowed if {
	decide("GET", "/pos/refunds/", user(["store"], ["fido"], 10)).allow
}

test_pos_refund_accepts_phr_acr_from_the_provider if {
	identity := object.union(user(["store"], ["pwd"], 10), {"acr": "phr"})
	decide("GET", "/pos/refunds/7", identity).allow
}

test_pos_refund_without_trailing_slash_is_still_a_refund if {
	d := decide("GET", "/pos/refunds", user(["store"], ["otp"], 10))
	not d.allow
	d.step_up.acr == "phr"
}

test_mfa_acr_from_the_provider_counts_as_mfa if {
	identity := object.union(user(["warehouse"], ["pwd"], 10), {"acr": "mfa"})
	decide("GET", "/wms/stock", identity).allow
}

test_mfa_acr_is_not_phishing_resistant if {
	identity := object.union(user(["store"], ["pwd"], 10), {"acr": "mfa"})
	not decide("GET", "/pos/refunds/1", identity).allow
}

test_pos_refund_in_other_case_is_still_a_refund if {
	not decide("GET", "/POS/Refunds/1", user(["store"], ["otp"], 10)).allow
}

test_pos_refund_without_auth_time_is_denied if {
	identity := object.remove(user(["store"], ["hwk"], 0), ["auth_time"])
	d := decide("GET", "/pos/refunds/1", identity)
	not d.allow
	d.reasons == ["requires sign-in within the last 900 s; the session has no auth_time"]
}

test_pos_refund_with_auth_time_in_the_future_is_denied if {
	d := decide("GET", "/pos/refunds/1", user(["store"], ["hwk"], -3600))
	not d.allow
	d.reasons == ["requires sign-in within the last 900 s; the session's auth_time is 3600 s in the future (more than the 60 s allowed for clock skew: check the issuer's clock)"]
}

test_pos_refund_with_auth_time_just_within_clock_skew_is_allowed if {
	decide("GET", "/pos/refunds/1", user(["store"], ["hwk"], -60)).allow
}

test_pos_refunds_lookalike_path_is_not_the_refunds_route if {
	# /pos/refundsX is another path: only the app's base MFA applies.
	decide("GET", "/pos/refundsx", user(["store"], ["otp"], 5000)).allow
}

# Rails routes /refunds(.:format), Spring MVC matched suffixes: the same handler.
test_pos_refunds_with_a_format_suffix_is_still_a_refund if {
	every path in ["/pos/refunds.json", "/pos/Refunds.XML/1", "/pos/refunds.json/", "/pos/refunds."] {
		d := decide("GET", path, user(["store"], ["otp"], 10))
		not d.allow
		d.step_up.acr == "phr"
	}
}

test_pos_refunds_with_a_format_suffix_and_phishing_resistant_mfa_is_allowed if {
	decide("GET", "/pos/refunds.json", user(["store"], ["hwk"], 10)).allow
}

test_analytics_read_needs_no_mfa if {
	decide("GET", "/analytics/dashboards", user(["analyst"], ["pwd"], 60)).allow
	decide("HEAD", "/analytics/dashboards", user(["analyst"], ["pwd"], 60)).allow
}

test_analytics_websocket_needs_mfa_although_it_is_a_get if {
	upgrade := object.union(request("GET", "/analytics/dashboards/7", user(["analyst"], ["pwd"], 60)), {"attributes": {"request": {"http": {"headers": {"upgrade": "WebSocket"}}}}})
	d := gateway.decision with input as upgrade
	not d.allow
	d.reasons == ["requires MFA with one of: fido, hwk, mfa, otp, swk"]
	with_mfa := object.union(upgrade, {"identity": user(["analyst"], ["otp"], 60)})
	gateway.decision.allow with input as with_mfa
}

test_analytics_method_is_compared_case_insensitively if {
	decide("get", "/analytics/dashboards", user(["analyst"], ["pwd"], 60)).allow
}

test_analytics_write_needs_mfa if {
	d := decide("POST", "/analytics/dashboards", user(["analyst"], ["pwd"], 60))
	not d.allow
	d.step_up.acr == "mfa"
}

test_analytics_read_still_needs_the_analyst_group if {
	not decide("GET", "/analytics/dashboards", user(["store"], ["otp"], 60)).allow
}

test_unauthenticated_request_gets_401 if {
	d := decide("GET", "/wms/stock", {"authenticated": false})
	not d.allow
	d.http_status == 401
	d.reasons == ["authentication required"]
	d.step_up == null
}

test_missing_identity_is_unauthenticated if {
	d := gateway.decision with input as object.remove(request("GET", "/wms/", {}), ["identity"])
	d.http_status == 401
}

test_authenticated_must_be_exactly_true if {
	identity := object.union(user(["warehouse"], ["otp"], 60), {"authenticated": "true"})
	decide("GET", "/wms/stock", identity).http_status == 401
}

test_unknown_app_is_404 if {
	d := decide("GET", "/payroll/", user(["warehouse"], ["otp"], 60))
	not d.allow
	d.http_status == 404
	d.reasons == ["no app \"payroll\" in the catalogue"]
}

test_empty_input_is_denied if {
	d := gateway.decision with input as {}
	not d.allow
	d.http_status == 404
}

test_groups_given_as_a_string_grant_nothing if {
	identity := object.union(user([], ["otp"], 60), {"groups": "warehouse"})
	not decide("GET", "/wms/stock", identity).allow
}

# --- risk signals (input.signals, with shared_state) ---------------------------

from_address(method, path, identity, signals) := d if {
	d := gateway.decision with input as object.union(request(method, path, identity), {"signals": signals})
}

new_address := {"available": true, "new_source_ip": true, "recent_denies": 0, "concurrent_sessions": 1}

known_address := {"available": true, "new_source_ip": false, "recent_denies": 0, "concurrent_sessions": 1}

test_pos_sales_from_a_new_source_address_need_a_phishing_resistant_sign_in if {
	d := from_address("GET", "/pos/sales", user(["store"], ["pwd", "otp"], 60), new_address)
	not d.allow
	d.step_up == {"acr": "phr", "max_age": 900}
	"new source address: a fresh phishing-resistant sign-in is needed from an address not used before" in d.reasons
}

test_pos_sales_from_a_known_source_address_need_only_mfa if {
	from_address("GET", "/pos/sales", user(["store"], ["pwd", "otp"], 60), known_address).allow
}

test_pos_sales_from_a_new_source_address_need_the_security_key_sign_in_fresh if {
	d := from_address("GET", "/pos/sales", user(["store"], ["pwd", "hwk"], 901), new_address)
	not d.allow
	d.step_up == {"acr": "phr", "max_age": 900}
	from_address("GET", "/pos/sales", user(["store"], ["pwd", "hwk"], 600), new_address).allow
}

test_pos_sales_from_a_known_source_address_take_an_old_sign_in if {
	from_address("GET", "/pos/sales", user(["store"], ["pwd", "otp"], 5000), known_address).allow
}

test_pos_refund_from_a_new_source_address_needs_a_fresh_phishing_resistant_sign_in if {
	d := from_address("POST", "/pos/refunds/42", user(["store"], ["pwd", "otp"], 60), new_address)
	not d.allow
	d.step_up == {"acr": "phr", "max_age": 900}
	from_address("POST", "/pos/refunds/42", user(["store"], ["pwd", "hwk"], 60), new_address).allow
}

test_new_source_address_does_not_matter_to_apps_without_the_rule if {
	from_address("GET", "/wms/stock", user(["warehouse"], ["pwd", "otp"], 60), new_address).allow
}

test_unavailable_signals_add_no_requirement if {
	signals := {"available": false, "reason": "redis down"}
	from_address("GET", "/pos/sales", user(["store"], ["otp"], 60), signals).allow
}

test_a_new_source_ip_signal_that_is_not_true_adds_no_requirement if {
	signals := {"available": true, "new_source_ip": "yes"}
	from_address("GET", "/pos/sales", user(["store"], ["otp"], 60), signals).allow
}

# missing_mfa (the allow path's question) and unmet_mfa (the deny's list) must
# agree: met, unmet by method, stale, no auth_time, future auth_time, several
# requirements at once (a refund from a new address), an exempt read.
test_missing_mfa_agrees_with_the_unmet_list if {
	cases := [
		["GET", "/wms/stock", user(["warehouse"], ["otp"], 60), {}],
		["GET", "/wms/stock", user(["warehouse"], ["pwd"], 60), {}],
		["POST", "/pos/refunds/1", user(["store"], ["hwk"], 60), {}],
		["POST", "/pos/refunds/1", user(["store"], ["hwk"], 3600), {}],
		["POST", "/pos/refunds/1", user(["store"], ["otp"], 3600), {}],
		["POST", "/pos/refunds/1", object.remove(user(["store"], ["hwk"], 60), ["auth_time"]), {}],
		["POST", "/pos/refunds/1", user(["store"], ["hwk"], -600), {}],
		["GET", "/pos/sales", user(["store"], ["fido"], 60), {"new_source_ip": true}],
		["GET", "/pos/refunds/1", user(["store"], ["fido"], 1200), {"new_source_ip": true}],
		["GET", "/analytics/board", user(["analyst"], ["pwd"], 60), {}],
	]
	answers := [[missing, listed] |
		some case in cases
		input_doc := object.union(request(case[0], case[1], case[2]), {"signals": case[3]})
		missing := missing_for(input_doc)
		listed := count(gateway.unmet_mfa) > 0 with input as input_doc
	]
	count(answers) == count(cases)
	every answer in answers {
		answer[0] == answer[1]
	}
	# Both kinds occur, so the agreement is not vacuous.
	[true, true] in answers
	[false, false] in answers
}

missing_for(doc) := true if {
	gateway.missing_mfa with input as doc
} else := false

# --- requests another site's page made a signed-in browser send ------------------------
# Fetch Metadata's Sec-Fetch-Site on a request with the session cookie: a page on a
# sibling subdomain (same site, so the Lax cookie goes with its form POSTs) must not
# change anything as the user.

from_another_site_reason := "requires a request from the app's own pages: the browser says a page on another site sent this one with the session cookie (Sec-Fetch-Site: \"same-site\")"

session_user(groups, amr, age) := object.union(user(groups, amr, age), {"method": "session"})

# The request as a browser sends it: these headers (lower-case names, as the gateway
# gives them; a header sent twice is one value joined with ",").
with_headers(method, path, identity, headers) := d if {
	document := object.union(request(method, path, identity), {"attributes": {"request": {"http": {"headers": headers}}}})
	d := gateway.decision with input as document
}

sibling_page := {"sec-fetch-site": "same-site", "origin": "https://shop.corp.example"}

test_a_sibling_subdomains_form_post_with_the_session_cookie_is_refused if {
	d := with_headers("POST", "/pos/sales", session_user(["store"], ["otp"], 60), sibling_page)
	not d.allow
	d.http_status == 403
	d.step_up == null
	d.reasons == [from_another_site_reason]
}

test_another_sites_post_with_the_session_cookie_is_refused if {
	headers := {"sec-fetch-site": "cross-site", "origin": "https://evil.example"}
	d := with_headers("POST", "/wms/orders", session_user(["warehouse"], ["otp"], 60), headers)
	not d.allow
	d.http_status == 403
	d.reasons == [replace(from_another_site_reason, "same-site", "cross-site")]
}

test_every_method_that_may_change_something_is_refused_from_another_site if {
	every method in ["POST", "PUT", "PATCH", "DELETE", "PROPFIND", "CONNECT", ""] {
		d := with_headers(method, "/wms/orders", session_user(["warehouse"], ["otp"], 60), sibling_page)
		not d.allow
		d.reasons == [from_another_site_reason]
	}
}

test_safe_methods_from_another_site_are_decided_as_before if {
	every method in ["GET", "HEAD", "OPTIONS"] {
		with_headers(method, "/wms/stock", session_user(["warehouse"], ["otp"], 60), sibling_page).allow
	}
}

test_a_post_from_the_gateways_own_pages_or_the_user_is_allowed if {
	every site in ["same-origin", "none"] {
		headers := {"sec-fetch-site": site, "origin": "https://gw.corp.example"}
		with_headers("POST", "/wms/orders", session_user(["warehouse"], ["otp"], 60), headers).allow
	}
}

# Clients that hold a session cookie (a script) send neither header: only a
# browser sends the cookie on a page's behalf, and its pages send an Origin.
test_a_post_without_sec_fetch_site_or_origin_is_allowed if {
	with_headers("POST", "/wms/orders", session_user(["warehouse"], ["otp"], 60), {}).allow
}

# A browser from before Fetch Metadata (Safari 16.3) sends no Sec-Fetch-Site, but
# its form POST carries the page's Origin: another host's page is refused, as in
# Go's CrossOriginProtection, and the deny says which header told.
test_an_old_browsers_post_from_another_sites_page_is_refused_by_its_origin if {
	every identity in [session_user(["warehouse"], ["otp"], 60), object.union(user(["warehouse"], ["otp"], 60), {"method": "mtls"})] {
		every origin in [
			"https://shop.corp.example",
			"https://gateway.example.evil.example",
			"https://evil.example/gateway.example",
			"null",
			"gateway.example",
			"",
			"https://gateway.example,https://evil.example", # Origin sent twice
		] {
			d := with_headers("POST", "/wms/orders", identity, {"origin": origin})
			not d.allow
			d.step_up == null
			d.reasons == [sprintf("requires a request from the app's own pages: the browser says a page on another site sent this one with %s (Origin: %s, no Sec-Fetch-Site)", [gateway.browser_credentials[identity.method], json.marshal(origin)])]
		}
	}
}

test_an_old_browsers_post_from_the_gateways_own_pages_is_allowed if {
	identity := session_user(["warehouse"], ["otp"], 60)
	every origin in ["https://gateway.example", "http://gateway.example"] {
		with_headers("POST", "/wms/orders", identity, {"origin": origin}).allow
	}
	every method in ["GET", "HEAD", "OPTIONS"] {
		with_headers(method, "/wms/stock", identity, {"origin": "https://shop.corp.example"}).allow
	}
}

test_an_old_browsers_post_from_an_apps_allowed_origin_is_allowed if {
	trusting([front_end], "POST", "/pos/sales", {"origin": front_end}).allow
	not trusting([front_end], "POST", "/pos/sales", {"origin": "https://shop.corp.example"}).allow
}

test_bearer_tokens_are_not_held_to_fetch_metadata if {
	identity := object.union(user(["warehouse"], ["otp"], 60), {"method": "bearer"})
	with_headers("POST", "/wms/orders", identity, sibling_page).allow
}

# A client certificate installed in a browser goes with any site's form POST (TLS
# client authentication has no SameSite): the page's request is the user's.
test_another_sites_post_with_a_browsers_client_certificate_is_refused if {
	identity := object.union(user(["warehouse"], ["otp"], 60), {"method": "mtls"})
	every site in ["cross-site", "same-site"] {
		headers := {"sec-fetch-site": site, "origin": "https://evil.example"}
		d := with_headers("POST", "/wms/orders", identity, headers)
		not d.allow
		d.step_up == null
		d.reasons == [sprintf("requires a request from the app's own pages: the browser says a page on another site sent this one with a client certificate (Sec-Fetch-Site: %s)", [json.marshal(site)])]
	}
}

# A service with a client certificate sends no Fetch Metadata; the gateway's own
# pages and the user send same-origin and none.
test_a_client_certificates_post_from_a_service_or_the_gateways_pages_is_allowed if {
	identity := object.union(user(["warehouse"], ["otp"], 60), {"method": "mtls"})
	with_headers("POST", "/wms/orders", identity, {}).allow
	every site in ["same-origin", "none"] {
		with_headers("POST", "/wms/orders", identity, {"sec-fetch-site": site}).allow
	}
}

# No browser sends Sec-Fetch-Site twice or with a value the standard lacks: not
# same-origin or none, so refused (a header twice arrives joined with ",").
test_a_sec_fetch_site_sent_twice_or_unknown_is_refused if {
	every site in ["same-origin,same-site", "same-origin,same-origin", "Same-Origin", "", "cross-origin"] {
		headers := {"sec-fetch-site": site}
		d := with_headers("POST", "/wms/orders", session_user(["warehouse"], ["otp"], 60), headers)
		not d.allow
		count(d.reasons) == 1
		startswith(d.reasons[0], "requires a request from the app's own pages")
	}
}

# Fails closed: a request the policy can't see the method of may change something.
test_a_request_without_a_method_is_refused_from_another_site if {
	document := object.union(request("POST", "/wms/orders", session_user(["warehouse"], ["otp"], 60)), {"attributes": {"request": {"http": {"headers": sibling_page}}}})
	d := gateway.decision with input as json.remove(document, ["attributes/request/http/method"])
	not d.allow
	d.reasons == [from_another_site_reason]
}

# Refused for where it came from, not for a weak sign-in: a stronger one would
# change nothing, so no step-up (which would send the browser to the provider).
test_a_refund_from_another_site_gets_no_step_up if {
	d := with_headers("POST", "/pos/refunds/42", session_user(["store"], ["otp"], 60), sibling_page)
	not d.allow
	d.http_status == 403
	d.step_up == null
	d.reasons == sort([from_another_site_reason, "requires MFA with one of: fido, hwk"])
}

test_other_reasons_are_still_listed if {
	d := with_headers("POST", "/pos/sales", session_user(["warehouse"], ["otp"], 60), sibling_page)
	d.reasons == sort([from_another_site_reason, "requires membership in one of: store"])
}

# --- allowed_origins: an app's own front end on a host of its own ------------------------

front_end := "https://pos-ui.corp.example"

from_front_end(origin) := object.union(sibling_page, {"origin": origin})

trusting(origins, method, path, headers) := d if {
	document := object.union(request(method, path, session_user(["store"], ["otp"], 60)), {"attributes": {"request": {"http": {"headers": headers}}}})
	d := gateway.decision with input as document with data.portcullis.catalogue.apps.pos.allowed_origins as origins
}

test_an_apps_allowed_origin_may_post_with_the_session_cookie if {
	trusting([front_end], "POST", "/pos/sales", from_front_end(front_end)).allow
	trusting([front_end], "DELETE", "/pos/sales/7", object.union(from_front_end(front_end), {"sec-fetch-site": "cross-site"})).allow
}

test_an_allowed_origin_is_matched_exactly if {
	every origin in [
		"https://shop.corp.example",
		"https://pos-ui.corp.example.evil.example",
		"http://pos-ui.corp.example",
		"https://pos-ui.corp.example:8443",
		"https://pos-ui.corp.example/",
		"https://POS-UI.corp.example",
		"https://pos-ui.corp.example,https://evil.example", # Origin sent twice
	] {
		d := trusting([front_end], "POST", "/pos/sales", from_front_end(origin))
		not d.allow
		d.reasons == [from_another_site_reason]
	}
}

test_an_allowed_origin_needs_the_origin_header if {
	not trusting([front_end], "POST", "/pos/sales", {"sec-fetch-site": "same-site"}).allow
}

# A sandboxed frame or a data: URL on any site sends Origin: null.
test_origin_null_is_never_an_allowed_origin if {
	not trusting(["null"], "POST", "/pos/sales", from_front_end("null")).allow
}

test_another_apps_allowed_origin_is_not_this_apps if {
	headers := from_front_end(front_end)
	identity := session_user(["warehouse"], ["otp"], 60)
	document := object.union(request("POST", "/wms/orders", identity), {"attributes": {"request": {"http": {"headers": headers}}}})
	not gateway.decision.allow with input as document with data.portcullis.catalogue.apps.pos.allowed_origins as [front_end]
}

# An entry must be an origin as a browser sends it, or it never matches.
test_the_shipped_allowed_origins_are_origins_as_browsers_send_them if {
	every app in data.portcullis.catalogue.apps {
		is_array(app.allowed_origins)
		every origin in app.allowed_origins {
			regex.match(`^https?://[a-z0-9.-]+(:[0-9]+)?$`, origin)
		}
	}
}
