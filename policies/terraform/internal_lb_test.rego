package portcullis.terraform.internal_lb_test

import rego.v1

import data.portcullis.lib.testing
import data.portcullis.terraform.internal_lb

test_internet_facing_pos_load_balancer_is_denied if {
	lb := testing.resource("aws_lb", "pos", {"load_balancer_type": "application", "tags": {"app": "pos"}})
	internal_lb.deny == {{
		"resource": "aws_lb.pos",
		"message": "load balancer aws_lb.pos (app pos, pci) is internet-facing (internal is not true); app backends are reached only through the gateway: set internal = true",
	}} with input as testing.document([lb])
}

test_explicitly_public_classic_elb_is_denied if {
	lb := testing.resource("aws_elb", "analytics", {"internal": false, "tags": {"app": "analytics"}})
	findings := internal_lb.deny with input as testing.document([lb])
	some f in findings
	f.resource == "aws_elb.analytics"
}

test_internal_app_load_balancer_is_allowed if {
	lb := testing.resource("aws_alb", "wms", {"internal": true, "tags": {"app": "wms"}})
	count(internal_lb.deny) == 0 with input as testing.document([lb])
}

test_gateway_load_balancer_may_face_the_internet if {
	lb := testing.resource("aws_lb", "gateway", {"internal": false, "tags": {"role": "portcullis-gateway"}})
	count(internal_lb.deny) == 0 with input as testing.document([lb])
}

test_non_catalogue_load_balancer_may_face_the_internet if {
	lb := testing.resource("aws_lb", "website", {"internal": false, "tags": {"app": "website"}})
	count(internal_lb.deny) == 0 with input as testing.document([lb])
}

test_unknown_internal_flag_is_not_flagged if {
	lb := testing.resource_with("aws_lb", "pos", {"tags": {"app": "pos"}}, {"unknown": ["internal"]})
	count(internal_lb.deny) == 0 with input as testing.document([lb])
}

test_unknown_internal_is_not_judged_and_said if {
	lb := testing.resource_with("aws_lb", "pos", {"tags": {"app": "pos"}}, {"unknown": ["internal"]})
	count(internal_lb.deny) == 0 with input as testing.document([lb])
	internal_lb.not_judged == {{"resource": "aws_lb.pos", "path": "internal"}} with input as testing.document([lb])
}
