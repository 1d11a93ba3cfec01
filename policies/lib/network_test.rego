package portcullis.lib.network_test

import rego.v1

import data.portcullis.lib.network
import data.portcullis.lib.testing

_sg := testing.resource("aws_security_group", "web", {"ingress": [
	{"protocol": "tcp", "from_port": 443, "to_port": 443, "cidr_blocks": ["10.0.0.0/8", "0.0.0.0/0"], "ipv6_cidr_blocks": ["::/0"]},
	{"protocol": "-1", "from_port": 0, "to_port": 0, "security_groups": ["sg-123"]},
]})

test_inline_ingress_yields_one_grant_per_cidr if {
	grants := network.cidr_ingress with input as testing.document([_sg])
	{g.cidr | some g in grants} == {"10.0.0.0/8", "0.0.0.0/0", "::/0"}
	every g in grants {
		g.address == "aws_security_group.web"
		g.security_groups == {"aws_security_group.web"}
		g.protocol == "tcp"
		g.from_port == 443
		g.where == "ingress block 0"
	}
}

test_inline_ingress_written_as_one_object_yields_the_same_grants if {
	[block, _] := _sg.config.ingress
	one := testing.resource("aws_security_group", "web", {"ingress": block})
	list := testing.resource("aws_security_group", "web", {"ingress": [block]})
	grants := network.cidr_ingress with input as testing.document([one])
	count(grants) == 3
	grants == network.cidr_ingress with input as testing.document([list])
}

test_ports_unknown_in_an_ingress_object_are_named_at_its_path if {
	sg := testing.resource_with("aws_security_group", "web", {"ingress": {"protocol": "tcp", "cidr_blocks": ["0.0.0.0/0"]}}, {
		"unknown": ["ingress.from_port", "ingress.to_port"],
	})
	[grant] := [g | some g in network.world_ingress] with input as testing.document([sg])
	grant.unknown_ports == "ingress.from_port"
	grant.where == "ingress block 0"
}

test_blocks_after_one_the_scanner_could_not_expand_are_read if {
	sg := testing.resource_with("aws_security_group", "web", {"ingress": [
		null,
		{"protocol": "tcp", "from_port": 22, "to_port": 22, "cidr_blocks": ["0.0.0.0/0"]},
	]}, {"unknown": ["ingress.0"]})
	grants := network.cidr_ingress with input as testing.document([sg])
	{[g.where, g.cidr, g.from_port] | some g in grants} == {["ingress block 1", "0.0.0.0/0", 22]}
}

test_standalone_rules_are_tied_to_their_security_group if {
	sg := testing.resource("aws_security_group", "app", {})
	rule := testing.resource_with("aws_security_group_rule", "https", {
		"type": "ingress", "protocol": "6", "from_port": "443", "to_port": "443", "cidr_blocks": ["0.0.0.0/0"],
	}, {"refs": {"security_group_id": ["aws_security_group.app"]}, "unknown": ["security_group_id"]})
	vpc_rule := testing.resource_with("aws_vpc_security_group_ingress_rule", "v6", {
		"ip_protocol": "tcp", "from_port": 443, "to_port": 443, "cidr_ipv6": "::/0",
	}, {"refs": {"security_group_id": ["aws_security_group.app.id"]}})
	grants := network.cidr_ingress with input as testing.document([sg, rule, vpc_rule])
	count(grants) == 2
	every g in grants {
		g.security_groups == {"aws_security_group.app"}
		g.protocol == "tcp"
		g.from_port == 443
	}
}

test_egress_rules_are_not_ingress if {
	rule := testing.resource("aws_security_group_rule", "out", {"type": "egress", "protocol": "-1", "from_port": 0, "to_port": 0, "cidr_blocks": ["0.0.0.0/0"]})
	count(network.cidr_ingress) == 0 with input as testing.document([rule])
}

test_unknown_cidr_yields_no_grant if {
	sg := testing.resource_with("aws_security_group", "web", {"ingress": [
		{"protocol": "tcp", "from_port": 22, "to_port": 22, "cidr_blocks": ["10.0.0.0/8", null]},
		{"protocol": "tcp", "from_port": 22, "to_port": 22},
	]}, {"unknown": ["ingress.0.cidr_blocks.1", "ingress.1.cidr_blocks"]})
	grants := network.cidr_ingress with input as testing.document([sg])
	{g.cidr | some g in grants} == {"10.0.0.0/8"}
}

# ...but every source CIDR the scanner could not resolve, the list or one of
# its elements, is listed, whichever way the ingress is declared.
test_unknown_cidrs_are_listed_for_each_way_ingress_is_declared if {
	listed := testing.resource_with("aws_security_group", "listed", {"ingress": [
		{"protocol": "tcp", "from_port": 22, "to_port": 22, "cidr_blocks": ["10.0.0.0/8", null]},
		{"protocol": "tcp", "from_port": 22, "to_port": 22},
		{"protocol": "tcp", "from_port": 22, "to_port": 22, "cidr_blocks": ["10.0.0.0/8"]},
	]}, {"unknown": ["ingress.0.cidr_blocks.1", "ingress.1.cidr_blocks"]})
	one := testing.resource_with("aws_security_group", "one", {"ingress": {"protocol": "tcp", "from_port": 22, "to_port": 22}}, {
		"unknown": ["ingress.ipv6_cidr_blocks"],
	})
	rule := testing.resource_with("aws_security_group_rule", "r", {"type": "ingress", "protocol": "tcp", "from_port": 22, "to_port": 22}, {
		"unknown": ["cidr_blocks"],
	})
	vpc_rule := testing.resource_with("aws_vpc_security_group_ingress_rule", "v", {"ip_protocol": "tcp", "from_port": 22, "to_port": 22}, {
		"unknown": ["cidr_ipv4"],
	})
	unknown := network.unknown_cidr_ingress with input as testing.document([listed, one, rule, vpc_rule])
	{[g.address, g.where, g.unknown_cidr] | some g in unknown} == {
		["aws_security_group.listed", "ingress block 0", "ingress.0.cidr_blocks.1"],
		["aws_security_group.listed", "ingress block 1", "ingress.1.cidr_blocks"],
		["aws_security_group.one", "ingress block 0", "ingress.ipv6_cidr_blocks"],
		["aws_security_group_rule.r", "", "cidr_blocks"],
		["aws_vpc_security_group_ingress_rule.v", "", "cidr_ipv4"],
	}
	every g in unknown {
		g.cidr == null
		g.protocol == "tcp"
		g.from_port == 22
	}
}

test_an_ingress_block_the_scanner_could_not_expand_has_an_unknown_cidr if {
	sg := testing.resource_with("aws_security_group", "web", {"ingress": [null]}, {"unknown": ["ingress.0"]})
	[g] := [grant | some grant in network.unknown_cidr_ingress] with input as testing.document([sg])
	g.unknown_cidr == "ingress.0.cidr_blocks"
	g.unknown_ports == "ingress.0.protocol"
}

test_known_cidrs_give_no_unknown_cidr_ingress if {
	sg := testing.resource_with("aws_security_group", "web", {"ingress": [
		{"protocol": "tcp", "cidr_blocks": ["0.0.0.0/0"]},
	]}, {"unknown": ["ingress.0.from_port", "tags.app"]})
	rule := testing.resource_with("aws_security_group_rule", "out", {"type": "egress", "protocol": "tcp", "from_port": 22, "to_port": 22}, {
		"unknown": ["cidr_blocks"],
	})
	count(network.unknown_cidr_ingress) == 0 with input as testing.document([sg, rule])
}

test_world_cidrs_are_any_slash_zero if {
	network.is_world_cidr("0.0.0.0/0")
	network.is_world_cidr("::/0")
	network.is_world_cidr("0::/0")
	not network.is_world_cidr("10.0.0.0/8")
	not network.is_world_cidr("0.0.0.0/10")
}

test_port_ranges_and_all_protocols_reach_a_port if {
	network.reaches({"protocol": "tcp", "from_port": 0, "to_port": 65535}, {"tcp"}, 22)
	network.reaches({"protocol": "all", "from_port": null, "to_port": null}, {"tcp"}, 3389)
	not network.reaches({"protocol": "tcp", "from_port": 23, "to_port": 3388}, {"tcp"}, 22)
	not network.reaches({"protocol": "udp", "from_port": 22, "to_port": 22}, {"tcp"}, 22)
	not network.reaches({"protocol": null, "from_port": 22, "to_port": 22}, {"tcp"}, 22)
	not network.reaches({"protocol": "tcp", "from_port": null, "to_port": null}, {"tcp"}, 22)
}

test_protocols_are_normalized_from_names_and_numbers if {
	grants := network.cidr_ingress with input as testing.document([testing.resource("aws_security_group", "s", {"ingress": [
		{"protocol": -1, "from_port": 0, "to_port": 0, "cidr_blocks": ["1.0.0.0/8"]},
		{"protocol": "ALL", "from_port": 0, "to_port": 0, "cidr_blocks": ["2.0.0.0/8"]},
		{"protocol": "17", "from_port": 53, "to_port": 53, "cidr_blocks": ["3.0.0.0/8"]},
	]})])
	{[g.cidr, g.protocol] | some g in grants} == {["1.0.0.0/8", "all"], ["2.0.0.0/8", "all"], ["3.0.0.0/8", "udp"]}
}

test_port_descriptions_read_naturally if {
	network.describe_ports({"protocol": "tcp", "from_port": 443, "to_port": 443}) == "port 443/tcp"
	network.describe_ports({"protocol": "tcp", "from_port": 0, "to_port": 65535}) == "ports 0-65535/tcp"
	network.describe_ports({"protocol": "all", "from_port": 0, "to_port": 0}) == "all ports and protocols (protocol -1)"
	network.describe_ports({"protocol": null, "from_port": null, "to_port": null}) == "ports the scanner could not resolve"
}

test_group_sources_are_resolved_for_all_three_declarations if {
	alb := testing.resource("aws_security_group", "alb", {})
	app := testing.resource_with("aws_security_group", "app", {"ingress": [{"protocol": "tcp", "from_port": 443, "to_port": 443}]}, {
		"unknown": ["ingress.0.security_groups"], "refs": {"ingress.0.security_groups": ["aws_security_group.alb"]},
	})
	rule := testing.resource_with("aws_security_group_rule", "r", {"type": "ingress", "protocol": "tcp", "from_port": 80, "to_port": 80}, {
		"refs": {"security_group_id": ["aws_security_group.app"], "source_security_group_id": ["aws_security_group.alb"]},
	})
	vpc_rule := testing.resource_with("aws_vpc_security_group_ingress_rule", "v", {"ip_protocol": "tcp"}, {
		"refs": {"security_group_id": ["aws_security_group.app"], "referenced_security_group_id": ["aws_security_group.alb"]},
	})
	grants := network.group_ingress with input as testing.document([alb, app, rule, vpc_rule])
	grants == {
		{"address": "aws_security_group.app", "where": "ingress block 0", "security_group": "aws_security_group.app", "source": "aws_security_group.alb"},
		{"address": "aws_security_group_rule.r", "where": "", "security_group": "aws_security_group.app", "source": "aws_security_group.alb"},
		{"address": "aws_vpc_security_group_ingress_rule.v", "where": "", "security_group": "aws_security_group.app", "source": "aws_security_group.alb"},
	}
}

test_group_sources_of_an_ingress_object_are_resolved if {
	alb := testing.resource("aws_security_group", "alb", {})
	app := testing.resource_with("aws_security_group", "app", {"ingress": {"protocol": "tcp", "from_port": 443, "to_port": 443}}, {
		"unknown": ["ingress.security_groups"], "refs": {"ingress": ["aws_security_group.alb"], "ingress.security_groups": ["aws_security_group.alb"]},
	})
	network.group_ingress == {
		{"address": "aws_security_group.app", "where": "ingress block 0", "security_group": "aws_security_group.app", "source": "aws_security_group.alb"},
	} with input as testing.document([alb, app])
}

# world_ingress is exactly the /0 part of cidr_ingress, whichever way the
# grant is declared, with odd spellings and unknown values mixed in.
test_world_ingress_is_the_world_part_of_cidr_ingress if {
	sg := testing.resource_with("aws_security_group", "mixed", {"ingress": [
		{"protocol": "tcp", "from_port": 22, "to_port": 22, "cidr_blocks": ["10.0.0.0/8", " 0.0.0.0/0 ", null]},
		{"protocol": "tcp", "from_port": 80, "to_port": 80, "ipv6_cidr_blocks": ["0::/0"]},
	]}, {"unknown": ["ingress.0.cidr_blocks.2", "ingress.1.from_port"]})
	private := testing.resource("aws_security_group", "private", {"ingress": [{"protocol": "tcp", "from_port": 22, "to_port": 22, "cidr_blocks": ["10.1.0.0/16"]}]})
	rule := testing.resource_with("aws_security_group_rule", "ssh", {
		"type": "ingress", "protocol": "6", "from_port": "22", "to_port": "22", "cidr_blocks": ["192.168.0.0/16", "0.0.0.0/0"],
	}, {"refs": {"security_group_id": ["aws_security_group.private.id"]}})
	vpc_rule := testing.resource("aws_vpc_security_group_ingress_rule", "v6", {"ip_protocol": "-1", "cidr_ipv6": "::/0"})
	other := testing.resource("aws_s3_bucket", "b", {"bucket": "0.0.0.0/0"})
	doc := testing.document([sg, private, rule, vpc_rule, other])
	all := network.cidr_ingress with input as doc
	world := network.world_ingress with input as doc
	world == {g | some g in all; network.is_world_cidr(g.cidr)}
	{[g.address, g.cidr] | some g in world} == {
		["aws_security_group.mixed", " 0.0.0.0/0 "],
		["aws_security_group.mixed", "0::/0"],
		["aws_security_group_rule.ssh", "0.0.0.0/0"],
		["aws_vpc_security_group_ingress_rule.v6", "::/0"],
	}
}

# concat(var.extra, [...]) with var.extra unset: the CIDRs it certainly holds
# are judged, and the rest (which may be 0.0.0.0/0) is an unknown CIDR, even
# on a resource with no unknown value, only an incomplete one.
test_an_incomplete_cidr_list_is_judged_on_what_it_holds_and_unknown_for_the_rest if {
	world := testing.resource_with("aws_security_group_rule", "world", {"type": "ingress", "protocol": "tcp", "from_port": 22, "to_port": 22, "cidr_blocks": ["0.0.0.0/0"]}, {"incomplete": ["cidr_blocks"]})
	private := testing.resource_with("aws_security_group_rule", "private", {"type": "ingress", "protocol": "tcp", "from_port": 22, "to_port": 22, "cidr_blocks": ["10.0.0.0/8"]}, {"incomplete": ["cidr_blocks"]})
	doc := testing.document([world, private])
	{[g.address, g.cidr] | some g in network.world_ingress} == {["aws_security_group_rule.world", "0.0.0.0/0"]} with input as doc
	{[g.address, g.unknown_cidr] | some g in network.unknown_cidr_ingress} == {
		["aws_security_group_rule.world", "cidr_blocks"],
		["aws_security_group_rule.private", "cidr_blocks"],
	} with input as doc
}

# ingress = concat(var.rules, [{...}]): the known rule is judged; the rules
# the scanner can't name are an ingress whose every value is unknown.
test_an_incomplete_ingress_list_keeps_an_ingress_for_the_rules_it_cant_name if {
	sg := testing.resource_with("aws_security_group", "web", {"ingress": [
		{"protocol": "tcp", "from_port": 22, "to_port": 22, "cidr_blocks": ["10.0.0.0/8"]},
	]}, {"incomplete": ["ingress"]})
	[g] := [grant | some grant in network.unknown_cidr_ingress] with input as testing.document([sg])
	g.unknown_cidr == "ingress.cidr_blocks"
	g.where == "ingress block 1"
	count(network.world_ingress) == 0 with input as testing.document([sg])
}
