package portcullis.terraform.admin_ports_test

import rego.v1

import data.portcullis.lib.testing
import data.portcullis.terraform.admin_ports

_sg(ingress) := testing.resource("aws_security_group", "web_node", {"ingress": ingress})

test_ssh_open_to_world_is_denied if {
	sg := _sg([{"protocol": "tcp", "from_port": 22, "to_port": 22, "cidr_blocks": ["0.0.0.0/0"]}])
	admin_ports.deny == {{
		"resource": "aws_security_group.web_node",
		"message": "aws_security_group.web_node opens SSH (port 22) to 0.0.0.0/0 in ingress block 0 via port 22/tcp; restrict the source to known CIDRs or use Session Manager",
	}} with input as testing.document([sg])
}

test_ssh_open_in_an_ingress_object_is_denied_as_in_a_list if {
	block := {"protocol": "tcp", "from_port": 22, "to_port": 22, "cidr_blocks": ["0.0.0.0/0"]}
	findings := admin_ports.deny with input as testing.document([_sg(block)])
	count(findings) == 1
	findings == admin_ports.deny with input as testing.document([_sg([block])])
}

test_rdp_open_to_ipv6_world_is_denied if {
	sg := _sg([{"protocol": "tcp", "from_port": 3389, "to_port": 3389, "ipv6_cidr_blocks": ["::/0"]}])
	findings := admin_ports.deny with input as testing.document([sg])
	some f in findings
	contains(f.message, "opens RDP (port 3389) to ::/0")
}

test_port_range_covering_ssh_is_denied if {
	rule := testing.resource("aws_security_group_rule", "wide", {
		"type": "ingress", "protocol": "tcp", "from_port": "0", "to_port": "1024", "cidr_blocks": ["0.0.0.0/0"],
	})
	findings := admin_ports.deny with input as testing.document([rule])
	{f.resource | some f in findings} == {"aws_security_group_rule.wide"}
	some f in findings
	contains(f.message, "via ports 0-1024/tcp")
}

test_all_protocols_open_to_world_exposes_ssh_and_rdp if {
	rule := testing.resource("aws_vpc_security_group_ingress_rule", "everything", {"ip_protocol": "-1", "cidr_ipv4": "0.0.0.0/0"})
	findings := admin_ports.deny with input as testing.document([rule])
	count(findings) == 2
	every f in findings {
		f.resource == "aws_vpc_security_group_ingress_rule.everything"
		contains(f.message, "via all ports and protocols (protocol -1)")
	}
}

test_ssh_from_a_private_range_is_allowed if {
	sg := _sg([{"protocol": "tcp", "from_port": 22, "to_port": 22, "cidr_blocks": ["10.0.0.0/8"]}])
	count(admin_ports.deny) == 0 with input as testing.document([sg])
}

test_https_open_to_world_is_not_an_admin_port if {
	sg := _sg([{"protocol": "tcp", "from_port": 443, "to_port": 443, "cidr_blocks": ["0.0.0.0/0"]}])
	count(admin_ports.deny) == 0 with input as testing.document([sg])
}

test_ssh_over_udp_is_not_ssh if {
	sg := _sg([{"protocol": "udp", "from_port": 22, "to_port": 22, "cidr_blocks": ["0.0.0.0/0"]}])
	count(admin_ports.deny) == 0 with input as testing.document([sg])
}

test_unknown_ports_are_not_flagged if {
	sg := testing.resource_with("aws_security_group", "web_node", {"ingress": [
		{"protocol": "tcp", "cidr_blocks": ["0.0.0.0/0"]},
	]}, {"unknown": ["ingress.0.from_port", "ingress.0.to_port"]})
	count(admin_ports.deny) == 0 with input as testing.document([sg])
}

test_egress_to_world_on_ssh_is_not_ingress if {
	rule := testing.resource("aws_security_group_rule", "out", {
		"type": "egress", "protocol": "tcp", "from_port": 22, "to_port": 22, "cidr_blocks": ["0.0.0.0/0"],
	})
	count(admin_ports.deny) == 0 with input as testing.document([rule])
}

test_world_open_grant_with_unknown_ports_is_not_judged_and_said if {
	sg := testing.resource_with("aws_security_group", "web_node", {"ingress": [
		{"protocol": "tcp", "cidr_blocks": ["0.0.0.0/0"]},
	]}, {"unknown": ["ingress.0.from_port", "ingress.0.to_port"]})
	admin_ports.not_judged == {{"resource": "aws_security_group.web_node", "path": "ingress.0.from_port"}} with input as testing.document([sg])
}

test_private_grant_with_unknown_ports_is_not_counted if {
	sg := testing.resource_with("aws_security_group", "web_node", {"ingress": [
		{"protocol": "tcp", "cidr_blocks": ["10.0.0.0/8"]},
	]}, {"unknown": ["ingress.0.from_port", "ingress.0.to_port"]})
	count(admin_ports.not_judged) == 0 with input as testing.document([sg])
}

# A source CIDR the scanner could not resolve may be the internet: on SSH or
# RDP it is not judged, and said so, however the ingress is declared.
test_unknown_cidr_on_ssh_is_not_judged_and_said if {
	ssh := {"protocol": "tcp", "from_port": 22, "to_port": 22}
	listed := testing.resource_with("aws_security_group", "listed", {"ingress": [ssh]}, {"unknown": ["ingress.0.cidr_blocks"]})
	one := testing.resource_with("aws_security_group", "one", {"ingress": object.union(ssh, {"cidr_blocks": ["10.0.0.0/8", null]})}, {
		"unknown": ["ingress.cidr_blocks.1"],
	})
	rule := testing.resource_with("aws_security_group_rule", "r", object.union(ssh, {"type": "ingress"}), {"unknown": ["cidr_blocks"]})
	vpc_rule := testing.resource_with("aws_vpc_security_group_ingress_rule", "v", {"ip_protocol": "tcp", "from_port": 3389, "to_port": 3389}, {
		"unknown": ["cidr_ipv6"],
	})
	doc := testing.document([listed, one, rule, vpc_rule])
	count(admin_ports.deny) == 0 with input as doc
	admin_ports.not_judged == {
		{"resource": "aws_security_group.listed", "path": "ingress.0.cidr_blocks"},
		{"resource": "aws_security_group.one", "path": "ingress.cidr_blocks.1"},
		{"resource": "aws_security_group_rule.r", "path": "cidr_blocks"},
		{"resource": "aws_vpc_security_group_ingress_rule.v", "path": "cidr_ipv6"},
	} with input as doc
}

test_unknown_cidr_with_unknown_ports_is_not_judged if {
	sg := testing.resource_with("aws_security_group", "web_node", {"ingress": [{"protocol": "tcp"}]}, {
		"unknown": ["ingress.0.from_port", "ingress.0.to_port", "ingress.0.cidr_blocks"],
	})
	admin_ports.not_judged == {{"resource": "aws_security_group.web_node", "path": "ingress.0.cidr_blocks"}} with input as testing.document([sg])
}

test_unknown_cidr_on_ports_that_are_not_ssh_or_rdp_is_judged if {
	https := testing.resource_with("aws_security_group", "web_node", {"ingress": [{"protocol": "tcp", "from_port": 443, "to_port": 443}]}, {
		"unknown": ["ingress.0.cidr_blocks"],
	})
	egress := testing.resource_with("aws_security_group_rule", "out", {"type": "egress", "protocol": "tcp", "from_port": 22, "to_port": 22}, {
		"unknown": ["cidr_blocks"],
	})
	count(admin_ports.not_judged) == 0 with input as testing.document([https, egress])
}

# The VPC's default group, adopted with aws_default_security_group, is a
# security group like any other: every instance launched without one joins it.
test_ssh_open_on_the_vpcs_default_security_group_is_denied if {
	sg := testing.resource("aws_default_security_group", "default", {"ingress": [
		{"protocol": "tcp", "from_port": 22, "to_port": 22, "cidr_blocks": ["0.0.0.0/0"]},
	]})
	{f.resource | some f in admin_ports.deny} == {"aws_default_security_group.default"} with input as testing.document([sg])
}
