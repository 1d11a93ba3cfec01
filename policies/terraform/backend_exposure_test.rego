package portcullis.terraform.backend_exposure_test

import rego.v1

import data.portcullis.lib.testing
import data.portcullis.terraform.backend_exposure

_gateway_sg := testing.resource("aws_security_group", "gateway", {
	"tags": {"role": "portcullis-gateway"},
	"ingress": [{"protocol": "tcp", "from_port": 443, "to_port": 443, "cidr_blocks": ["0.0.0.0/0"]}],
})

_pos_backend(ingress) := testing.resource("aws_security_group", "pos_backend", {"tags": {"app": "pos"}, "ingress": ingress})

_https_from_world := {"protocol": "tcp", "from_port": 443, "to_port": 443, "cidr_blocks": ["0.0.0.0/0"]}

test_pos_backend_open_to_world_is_denied if {
	findings := backend_exposure.deny with input as testing.document([_pos_backend([_https_from_world])])
	findings == {{
		"resource": "aws_security_group.pos_backend",
		"message": "security group aws_security_group.pos_backend (app pos, pci) allows ingress from 0.0.0.0/0 on port 443/tcp; only the gateway security group (tagged role=portcullis-gateway) may reach app backends",
	}}
}

test_pos_backend_open_in_an_ingress_object_is_denied_as_in_a_list if {
	findings := backend_exposure.deny with input as testing.document([_pos_backend(_https_from_world)])
	count(findings) == 1
	findings == backend_exposure.deny with input as testing.document([_pos_backend([_https_from_world])])
}

test_backend_open_to_ipv6_world_is_denied if {
	open := {"protocol": "tcp", "from_port": 8080, "to_port": 8080, "ipv6_cidr_blocks": ["::/0"]}
	findings := backend_exposure.deny with input as testing.document([_pos_backend([open])])
	some f in findings
	f.resource == "aws_security_group.pos_backend"
	contains(f.message, "from ::/0 on port 8080/tcp")
}

test_ingress_from_gateway_security_group_is_allowed if {
	backend := testing.resource_with("aws_security_group", "pos_backend", {
		"tags": {"app": "pos"},
		"ingress": [{"protocol": "tcp", "from_port": 443, "to_port": 443}],
	}, {"unknown": ["ingress.0.security_groups"], "refs": {"ingress.0.security_groups": ["aws_security_group.gateway"]}})
	count(backend_exposure.deny) == 0 with input as testing.document([_gateway_sg, backend])
}

test_private_cidr_ingress_is_allowed if {
	internal := {"protocol": "tcp", "from_port": 443, "to_port": 443, "cidr_blocks": ["10.0.0.0/8"]}
	count(backend_exposure.deny) == 0 with input as testing.document([_pos_backend([internal])])
}

test_gateway_security_group_may_face_the_internet if {
	count(backend_exposure.deny) == 0 with input as testing.document([_gateway_sg])
}

test_non_catalogue_security_group_is_not_held_to_the_gateway_rule if {
	web := testing.resource("aws_security_group", "marketing_site", {"tags": {"app": "marketing"}, "ingress": [_https_from_world]})
	count(backend_exposure.deny) == 0 with input as testing.document([web])
}

test_unknown_cidr_is_not_flagged if {
	backend := testing.resource_with("aws_security_group", "pos_backend", {
		"tags": {"app": "pos"},
		"ingress": [{"protocol": "tcp", "from_port": 443, "to_port": 443}],
	}, {"unknown": ["ingress.0.cidr_blocks"]})
	count(backend_exposure.deny) == 0 with input as testing.document([backend])
}

test_unknown_app_tag_is_not_flagged if {
	backend := testing.resource_with("aws_security_group", "pos_backend", {
		"tags": {"Name": "backend"},
		"ingress": [_https_from_world],
	}, {"unknown": ["tags.app"]})
	count(backend_exposure.deny) == 0 with input as testing.document([backend])
}

test_standalone_rule_opening_app_group_to_world_is_denied_on_the_rule if {
	backend := _pos_backend([])
	rule := testing.resource_with("aws_security_group_rule", "pos_https", {
		"type": "ingress", "protocol": "tcp", "from_port": 443, "to_port": 443, "cidr_blocks": ["0.0.0.0/0"],
	}, {"unknown": ["security_group_id"], "refs": {"security_group_id": ["aws_security_group.pos_backend"]}})
	findings := backend_exposure.deny with input as testing.document([backend, rule])
	[f.resource | some f in findings] == ["aws_security_group_rule.pos_https"]
	some f in findings
	contains(f.message, "rule aws_security_group_rule.pos_https on security group aws_security_group.pos_backend (app pos, pci)")
}

test_vpc_ingress_rule_open_to_world_on_wms_backend_is_denied if {
	backend := testing.resource("aws_security_group", "wms", {"tags": {"app": "wms"}})
	rule := testing.resource_with("aws_vpc_security_group_ingress_rule", "wms_all", {
		"ip_protocol": "-1", "cidr_ipv4": "0.0.0.0/0",
	}, {"refs": {"security_group_id": ["aws_security_group.wms.id"]}})
	findings := backend_exposure.deny with input as testing.document([backend, rule])
	some f in findings
	f.resource == "aws_vpc_security_group_ingress_rule.wms_all"
	contains(f.message, "(app wms, confidential) allows ingress from 0.0.0.0/0 on all ports and protocols")
}

test_vpc_ingress_rule_from_gateway_group_is_allowed if {
	backend := testing.resource("aws_security_group", "wms", {"tags": {"app": "wms"}})
	rule := testing.resource_with("aws_vpc_security_group_ingress_rule", "from_gateway", {
		"ip_protocol": "tcp", "from_port": 443, "to_port": 443,
	}, {"refs": {"security_group_id": ["aws_security_group.wms"], "referenced_security_group_id": ["aws_security_group.gateway"]}})
	count(backend_exposure.deny) == 0 with input as testing.document([_gateway_sg, backend, rule])
}

test_rule_on_a_group_outside_the_document_is_not_flagged if {
	rule := testing.resource_with("aws_security_group_rule", "open", {
		"type": "ingress", "protocol": "tcp", "from_port": 443, "to_port": 443, "cidr_blocks": ["0.0.0.0/0"],
	}, {"unknown": ["security_group_id"], "refs": {"security_group_id": ["module.network"]}})
	count(backend_exposure.deny) == 0 with input as testing.document([rule])
}

test_backend_behind_a_world_open_non_gateway_group_is_denied if {
	public_alb := testing.resource("aws_security_group", "public_alb", {"ingress": [_https_from_world]})
	backend := testing.resource_with("aws_security_group", "pos_backend", {
		"tags": {"app": "pos"},
		"ingress": [{"protocol": "tcp", "from_port": 8080, "to_port": 8080}],
	}, {"unknown": ["ingress.0.security_groups"], "refs": {"ingress.0.security_groups": ["aws_security_group.public_alb"]}})
	backend_exposure.deny == {{
		"resource": "aws_security_group.pos_backend",
		"message": "security group aws_security_group.pos_backend (app pos, pci) admits security group aws_security_group.public_alb, which is open to 0.0.0.0/0; only the gateway security group (tagged role=portcullis-gateway) may reach app backends",
	}} with input as testing.document([public_alb, backend])
}

test_backend_behind_a_private_group_is_allowed if {
	batch := testing.resource("aws_security_group", "batch", {"ingress": [{"protocol": "tcp", "from_port": 22, "to_port": 22, "cidr_blocks": ["10.0.0.0/8"]}]})
	rule := testing.resource_with("aws_security_group_rule", "from_batch", {"type": "ingress", "protocol": "tcp", "from_port": 443, "to_port": 443}, {
		"refs": {"security_group_id": ["aws_security_group.pos_backend"], "source_security_group_id": ["aws_security_group.batch"]},
	})
	count(backend_exposure.deny) == 0 with input as testing.document([batch, _pos_backend([]), rule])
}

test_backend_behind_a_world_open_group_is_denied_with_ingress_objects if {
	public_alb := testing.resource("aws_security_group", "public_alb", {"ingress": _https_from_world})
	backend := testing.resource_with("aws_security_group", "pos_backend", {
		"tags": {"app": "pos"},
		"ingress": {"protocol": "tcp", "from_port": 8080, "to_port": 8080},
	}, {
		"unknown": ["ingress.security_groups"],
		"refs": {"ingress": ["aws_security_group.public_alb"], "ingress.security_groups": ["aws_security_group.public_alb"]},
	})
	findings := backend_exposure.deny with input as testing.document([public_alb, backend])
	[f.message | some f in findings] == ["security group aws_security_group.pos_backend (app pos, pci) admits security group aws_security_group.public_alb, which is open to 0.0.0.0/0; only the gateway security group (tagged role=portcullis-gateway) may reach app backends"]
}

# A source CIDR the scanner could not resolve may be the internet: ingress to
# an app's group from one is not judged, and said so, however it is declared.
test_unknown_cidr_into_an_app_group_is_not_judged_and_said if {
	backend := testing.resource_with("aws_security_group", "pos_backend", {
		"tags": {"app": "pos"},
		"ingress": {"protocol": "tcp", "from_port": 443, "to_port": 443},
	}, {"unknown": ["ingress.cidr_blocks"]})
	rule := testing.resource_with("aws_security_group_rule", "pos_https", {
		"type": "ingress", "protocol": "tcp", "from_port": 443, "to_port": 443, "cidr_blocks": [null],
	}, {"unknown": ["security_group_id", "cidr_blocks.0"], "refs": {"security_group_id": ["aws_security_group.pos_backend"]}})
	vpc_rule := testing.resource_with("aws_vpc_security_group_ingress_rule", "pos_all", {"ip_protocol": "-1"}, {
		"unknown": ["cidr_ipv4"], "refs": {"security_group_id": ["aws_security_group.pos_backend.id"]},
	})
	doc := testing.document([backend, rule, vpc_rule])
	count(backend_exposure.deny) == 0 with input as doc
	backend_exposure.not_judged == {
		{"resource": "aws_security_group.pos_backend", "path": "ingress.cidr_blocks"},
		{"resource": "aws_security_group_rule.pos_https", "path": "cidr_blocks.0"},
		{"resource": "aws_vpc_security_group_ingress_rule.pos_all", "path": "cidr_ipv4"},
	} with input as doc
}

test_unknown_cidr_into_the_gateway_or_a_non_app_group_is_not_counted if {
	gateway := testing.resource_with("aws_security_group", "gateway", {
		"tags": {"role": "portcullis-gateway", "app": "pos"},
		"ingress": [{"protocol": "tcp", "from_port": 443, "to_port": 443}],
	}, {"unknown": ["ingress.0.cidr_blocks"]})
	batch := testing.resource_with("aws_security_group", "batch", {"ingress": [{"protocol": "tcp", "from_port": 22, "to_port": 22}]}, {
		"unknown": ["ingress.0.cidr_blocks"],
	})
	count(backend_exposure.not_judged) == 0 with input as testing.document([gateway, batch])
}

# A rule open to the internet on a group the scan doesn't hold (an ID given
# literally or through a variable, a group made elsewhere) may open an app
# backend: not judged, and said why; a group in the scan is judged as before.
test_world_rule_on_a_group_outside_the_scan_is_not_judged_and_said if {
	literal := testing.resource("aws_security_group_rule", "by_id", {
		"type": "ingress", "protocol": "tcp", "from_port": 443, "to_port": 443,
		"cidr_blocks": ["0.0.0.0/0"], "security_group_id": "sg-0123456789abcdef0",
	})
	elsewhere := testing.resource_with("aws_vpc_security_group_ingress_rule", "from_data", {
		"ip_protocol": "tcp", "from_port": 443, "to_port": 443, "cidr_ipv4": "0.0.0.0/0",
	}, {"unknown": ["security_group_id"], "refs": {"security_group_id": ["data.aws_security_group.pos"]}})
	doc := testing.document([literal, elsewhere])
	count(backend_exposure.deny) == 0 with input as doc
	reason := "the security group it applies to is not in this scan, so whether it is an app backend's is unknown"
	backend_exposure.not_judged == {
		{"resource": "aws_security_group_rule.by_id", "path": "security_group_id", "reason": reason},
		{"resource": "aws_vpc_security_group_ingress_rule.from_data", "path": "security_group_id", "reason": reason},
	} with input as doc
}

test_world_rule_on_a_non_app_group_in_the_scan_is_judged_and_passes if {
	batch := testing.resource("aws_security_group", "batch", {})
	rule := testing.resource_with("aws_security_group_rule", "batch_https", {
		"type": "ingress", "protocol": "tcp", "from_port": 443, "to_port": 443, "cidr_blocks": ["0.0.0.0/0"],
	}, {"unknown": ["security_group_id"], "refs": {"security_group_id": ["aws_security_group.batch"]}})
	doc := testing.document([batch, rule])
	count(backend_exposure.deny) == 0 with input as doc
	count(backend_exposure.not_judged) == 0 with input as doc
}

# An app's backend in the VPC's default group (aws_default_security_group) is
# held to the rule as any security group is, inline or through a rule on it.
test_app_backend_in_the_vpcs_default_security_group_open_to_world_is_denied if {
	inline := testing.resource("aws_default_security_group", "default", {"tags": {"app": "pos"}, "ingress": [_https_from_world]})
	found := {f.resource | some f in backend_exposure.deny} with input as testing.document([inline])
	found == {"aws_default_security_group.default"}
	adopted := testing.resource("aws_default_security_group", "default", {"tags": {"app": "pos"}})
	rule := testing.resource_with("aws_vpc_security_group_ingress_rule", "pos_https", {
		"ip_protocol": "tcp", "from_port": 443, "to_port": 443, "cidr_ipv4": "0.0.0.0/0",
	}, {"refs": {"security_group_id": ["aws_default_security_group.default.id"]}})
	doc := testing.document([adopted, rule])
	{f.resource | some f in backend_exposure.deny} == {"aws_vpc_security_group_ingress_rule.pos_https"} with input as doc
	count(backend_exposure.not_judged) == 0 with input as doc
}
