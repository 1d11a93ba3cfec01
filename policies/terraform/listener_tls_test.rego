package portcullis.terraform.listener_tls_test

import rego.v1

import data.portcullis.lib.testing
import data.portcullis.terraform.listener_tls

_listener(name, config) := testing.resource_with("aws_lb_listener", name, config, {
	"unknown": ["load_balancer_arn", "certificate_arn"],
	"refs": {"load_balancer_arn": ["aws_lb.pos"]},
})

_pos_lb := testing.resource("aws_lb", "pos", {"internal": true, "tags": {"app": "pos"}})

_forward := [{"type": "forward"}]

test_https_listener_with_tls10_policy_is_denied if {
	l := _listener("pos_https", {"protocol": "HTTPS", "port": 443, "ssl_policy": "ELBSecurityPolicy-2016-08", "default_action": _forward})
	listener_tls.deny == {{
		"resource": "aws_lb_listener.pos_https",
		"message": "HTTPS listener aws_lb_listener.pos_https uses ssl_policy ELBSecurityPolicy-2016-08, which accepts TLS 1.0; set ssl_policy = \"ELBSecurityPolicy-TLS13-1-2-2021-06\"",
	}} with input as testing.document([_pos_lb, l])
}

test_https_listener_without_ssl_policy_gets_the_tls10_default if {
	l := testing.resource("aws_alb_listener", "https", {"protocol": "HTTPS", "port": 443, "default_action": _forward})
	findings := listener_tls.deny with input as testing.document([l])
	some f in findings
	f.resource == "aws_alb_listener.https"
	contains(f.message, "sets no ssl_policy, so AWS applies ELBSecurityPolicy-2016-08, which accepts TLS 1.0")
}

test_tls_listener_with_tls11_policy_is_denied if {
	l := testing.resource("aws_lb_listener", "nlb_tls", {"protocol": "TLS", "port": 443, "ssl_policy": "ELBSecurityPolicy-TLS13-1-1-2021-06"})
	findings := listener_tls.deny with input as testing.document([l])
	some f in findings
	contains(f.message, "which accepts TLS 1.1")
}

test_tls12_and_newer_policies_are_allowed if {
	every policy in [
		"ELBSecurityPolicy-TLS13-1-2-2021-06",
		"ELBSecurityPolicy-TLS13-1-3-2021-06",
		"ELBSecurityPolicy-TLS-1-2-2017-01",
		"ELBSecurityPolicy-TLS-1-2-Ext-2018-06",
		"ELBSecurityPolicy-FS-1-2-Res-2020-10",
		"ELBSecurityPolicy-TLS13-1-2-FIPS-2023-04",
	] {
		l := testing.resource("aws_lb_listener", "https", {"protocol": "HTTPS", "ssl_policy": policy})
		count(listener_tls.deny) == 0 with input as testing.document([l])
	}
}

test_legacy_policy_names_are_recognised_as_weak if {
	listener_tls.minimum_tls("ELBSecurityPolicy-2016-08") == "1.0"
	listener_tls.minimum_tls("ELBSecurityPolicy-FS-2018-06") == "1.0"
	listener_tls.minimum_tls("ELBSecurityPolicy-TLS13-1-0-2021-06") == "1.0"
	listener_tls.minimum_tls("ELBSecurityPolicy-TLS-1-1-2017-01") == "1.1"
	listener_tls.minimum_tls("ELBSecurityPolicy-FS-1-1-2019-08") == "1.1"
}

test_unrecognised_policy_name_is_denied if {
	l := testing.resource("aws_lb_listener", "https", {"protocol": "HTTPS", "ssl_policy": "MyCustomPolicy"})
	findings := listener_tls.deny with input as testing.document([l])
	some f in findings
	contains(f.message, "uses ssl_policy MyCustomPolicy, which is not a known TLS 1.2+ policy")
}

test_unknown_ssl_policy_is_not_flagged if {
	l := testing.resource_with("aws_lb_listener", "https", {"protocol": "HTTPS"}, {"unknown": ["ssl_policy"]})
	count(listener_tls.deny) == 0 with input as testing.document([l])
}

test_http_listener_of_app_lb_that_forwards_is_denied if {
	l := _listener("pos_http", {"protocol": "HTTP", "port": 80, "default_action": _forward})
	findings := listener_tls.deny with input as testing.document([_pos_lb, l])
	{f.resource | some f in findings} == {"aws_lb_listener.pos_http"}
	some f in findings
	contains(f.message, "HTTP listener aws_lb_listener.pos_http on load balancer aws_lb.pos (app pos, pci) serves plaintext (default action \"forward\")")
}

test_listener_without_protocol_on_alb_is_plain_http if {
	l := _listener("pos_default", {"port": 80, "default_action": _forward})
	findings := listener_tls.deny with input as testing.document([_pos_lb, l])
	some f in findings
	f.resource == "aws_lb_listener.pos_default"
}

test_http_listener_redirecting_to_https_is_allowed if {
	l := _listener("pos_http", {"protocol": "HTTP", "port": 80, "default_action": [{
		"type": "redirect",
		"redirect": [{"protocol": "HTTPS", "port": "443", "status_code": "HTTP_301"}],
	}]})
	count(listener_tls.deny) == 0 with input as testing.document([_pos_lb, l])
}

test_http_listener_redirecting_to_http_is_denied if {
	l := _listener("pos_http", {"protocol": "HTTP", "default_action": [{"type": "redirect", "redirect": [{"port": "8080"}]}]})
	findings := listener_tls.deny with input as testing.document([_pos_lb, l])
	some f in findings
	f.resource == "aws_lb_listener.pos_http"
}

test_http_listener_with_unknown_default_action_is_not_flagged if {
	l := testing.resource_with("aws_lb_listener", "pos_http", {"protocol": "HTTP", "default_action": [{}]}, {
		"unknown": ["load_balancer_arn", "default_action.0"],
		"refs": {"load_balancer_arn": ["aws_lb.pos"]},
	})
	count(listener_tls.deny) == 0 with input as testing.document([_pos_lb, l])
}

test_http_listener_of_non_catalogue_lb_is_not_flagged if {
	lb := testing.resource("aws_lb", "website", {"tags": {"app": "website"}})
	l := testing.resource_with("aws_lb_listener", "http", {"protocol": "HTTP", "default_action": _forward}, {
		"refs": {"load_balancer_arn": ["aws_lb.website"]},
	})
	count(listener_tls.deny) == 0 with input as testing.document([lb, l])
}

test_http_listener_on_app_classic_elb_is_denied if {
	elb := testing.resource("aws_elb", "weblb", {"internal": true, "tags": {"app": "pos"}, "listener": [
		{"instance_port": 8000, "instance_protocol": "http", "lb_port": 80, "lb_protocol": "http"},
		{"instance_port": 8443, "instance_protocol": "https", "lb_port": 443, "lb_protocol": "https"},
	]})
	findings := listener_tls.deny with input as testing.document([elb])
	[f.message | some f in findings] == ["classic load balancer aws_elb.weblb (app pos, pci) has a plaintext HTTP listener on port 80, and classic ELBs cannot redirect to HTTPS; keep only HTTPS listeners, or move to an ALB whose HTTP listener redirects"]
}

# Judge what is known: the target group ARN of a forward action is computed at
# apply, but type = "forward" already says the listener serves plaintext.
test_http_listener_forwarding_to_an_unknown_target_group_is_denied if {
	l := testing.resource_with("aws_lb_listener", "pos_http", {"protocol": "HTTP", "port": 80, "default_action": [{"type": "forward"}]}, {
		"unknown": ["load_balancer_arn", "default_action.0.target_group_arn"],
		"refs": {"load_balancer_arn": ["aws_lb.pos"]},
	})
	findings := listener_tls.deny with input as testing.document([_pos_lb, l])
	{f.resource | some f in findings} == {"aws_lb_listener.pos_http"}
	count(listener_tls.not_judged) == 0 with input as testing.document([_pos_lb, l])
}

test_redirect_with_unknown_protocol_is_not_judged_and_said if {
	l := testing.resource_with("aws_lb_listener", "pos_http", {"protocol": "HTTP", "default_action": [{"type": "redirect", "redirect": [{"port": "443"}]}]}, {
		"unknown": ["load_balancer_arn", "default_action.0.redirect.0.protocol"],
		"refs": {"load_balancer_arn": ["aws_lb.pos"]},
	})
	count(listener_tls.deny) == 0 with input as testing.document([_pos_lb, l])
	listener_tls.not_judged == {{"resource": "aws_lb_listener.pos_http", "path": "default_action.0.redirect"}} with input as testing.document([_pos_lb, l])
}

test_unknown_ssl_policy_is_not_judged_and_said if {
	l := testing.resource_with("aws_lb_listener", "https", {"protocol": "HTTPS"}, {"unknown": ["ssl_policy"]})
	listener_tls.not_judged == {{"resource": "aws_lb_listener.https", "path": "ssl_policy"}} with input as testing.document([l])
}

test_listener_resolved_by_the_scanners_targets if {
	l := testing.resource_with("aws_lb_listener", "pos_http", {"protocol": "HTTP", "default_action": _forward}, {
		"unknown": ["load_balancer_arn"],
		"refs": {"load_balancer_arn": ["aws_lb.pos.arn"]},
		"targets": {"load_balancer_arn": ["aws_lb.pos"]},
	})
	{f.resource | some f in listener_tls.deny} == {"aws_lb_listener.pos_http"} with input as testing.document([_pos_lb, l])
}

# .tf.json may write default_action, redirect and listener as one object each.
test_http_listener_with_a_default_action_object_is_judged_as_with_a_list if {
	forward := _listener("pos_http", {"protocol": "HTTP", "port": 80, "default_action": {"type": "forward"}})
	findings := listener_tls.deny with input as testing.document([_pos_lb, forward])
	count(findings) == 1
	findings == listener_tls.deny with input as testing.document([_pos_lb, _listener("pos_http", {"protocol": "HTTP", "port": 80, "default_action": _forward})])
	redirect := _listener("pos_http", {"protocol": "HTTP", "default_action": {"type": "redirect", "redirect": {"protocol": "HTTPS", "port": "443"}}})
	count(listener_tls.deny) == 0 with input as testing.document([_pos_lb, redirect])
}

test_unknown_default_action_object_is_not_judged_and_said if {
	l := testing.resource_with("aws_lb_listener", "pos_http", {"protocol": "HTTP", "default_action": {"redirect": {"protocol": "HTTPS"}}}, {
		"unknown": ["load_balancer_arn", "default_action.type"],
		"refs": {"load_balancer_arn": ["aws_lb.pos"]},
	})
	count(listener_tls.deny) == 0 with input as testing.document([_pos_lb, l])
	listener_tls.not_judged == {{"resource": "aws_lb_listener.pos_http", "path": "default_action.type"}} with input as testing.document([_pos_lb, l])
}

test_http_listener_object_on_app_classic_elb_is_denied if {
	elb := testing.resource("aws_elb", "weblb", {"internal": true, "tags": {"app": "pos"}, "listener": {
		"instance_port": 8000, "instance_protocol": "http", "lb_port": 80, "lb_protocol": "HTTP",
	}})
	findings := listener_tls.deny with input as testing.document([elb])
	some f in findings
	contains(f.message, "has a plaintext HTTP listener on port 80")
}
