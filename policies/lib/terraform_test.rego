package portcullis.lib.terraform_test

import rego.v1

import data.portcullis.lib.terraform as tf
import data.portcullis.lib.testing

# --- unknown values ---

test_path_string_joins_keys_and_list_indexes if {
	tf.path_string(["ingress", 0, "cidr_blocks"]) == "ingress.0.cidr_blocks"
}

test_unknown_path_covers_everything_beneath_it if {
	r := testing.resource_with("aws_security_group", "sg", {}, {"unknown": ["ingress.0"]})
	tf.is_unknown(r, ["ingress", 0, "cidr_blocks"])
	tf.is_unknown(r, ["ingress", 0])
	not tf.is_unknown(r, ["ingress", 1, "cidr_blocks"])
	not tf.is_unknown(r, ["ingress"])
}

test_unknown_prefix_is_matched_by_segment_not_by_text if {
	r := testing.resource_with("aws_s3_bucket", "b", {}, {"unknown": ["tags.app"]})
	not tf.is_unknown(r, ["tags", "application"])
	not tf.is_unknown(r, ["tags", "ap"])
	tf.is_unknown(r, ["tags", "app"])
}

test_unknown_within_sees_unknown_children if {
	r := testing.resource_with("aws_s3_bucket", "b", {}, {"unknown": ["logging.0.target_bucket"]})
	tf.has_unknown_within(r, ["logging"])
	not tf.is_unknown(r, ["logging"])
	not tf.has_unknown_within(r, ["log"])
}

test_value_is_undefined_when_unknown_or_unset if {
	r := testing.resource_with("aws_ebs_volume", "v", {"size": 1, "encrypted": null}, {"unknown": ["encrypted"]})
	tf.value(r, ["size"]) == 1
	not tf.value(r, ["encrypted"])
	not tf.value(r, ["kms_key_id"])
	tf.value_or(r, ["kms_key_id"], "none") == "none"
}

test_resource_without_unknown_or_config_fields_is_read_safely if {
	r := {"address": "aws_ebs_volume.v", "type": "aws_ebs_volume"}
	not tf.is_unknown(r, ["encrypted"])
	tf.value_or(r, ["encrypted"], false) == false
	tf.apps_of(r) == set()
}

test_blocks_accept_a_single_object_or_a_list if {
	one := testing.resource("aws_s3_bucket", "a", {"logging": {"target_bucket": "logs"}})
	many := testing.resource("aws_s3_bucket", "b", {"logging": [{"target_bucket": "logs"}]})
	none := testing.resource("aws_s3_bucket", "c", {})
	count(tf.blocks(one, ["logging"])) == 1
	count(tf.blocks(many, ["logging"])) == 1
	tf.blocks(none, ["logging"]) == []
	tf.as_objects("not a block") == []
}

# .tf.json writes a nested block as a list of objects or as one object; rules
# read each block's values at the path block_paths gives, in either shape.
test_block_paths_follow_the_shape_the_blocks_arrived_in if {
	many := testing.resource("aws_security_group", "a", {"ingress": [{"from_port": 22}, {"from_port": 443}]})
	one := testing.resource("aws_security_group", "b", {"ingress": {"from_port": 22}})
	none := testing.resource("aws_security_group", "c", {})
	tf.block_paths(many, ["ingress"]) == [["ingress", 0], ["ingress", 1]]
	tf.block_paths(one, ["ingress"]) == [["ingress"]]
	tf.block_paths(none, ["ingress"]) == []
	tf.value(one, array.concat(tf.block_paths(one, ["ingress"])[0], ["from_port"])) == 22
}

# A block the scanner could not expand keeps its place, so the blocks after it
# are read at their own index, and stands for blocks whose values are unknown.
test_block_paths_keep_blocks_the_scanner_could_not_expand if {
	dynamic := testing.resource_with("aws_security_group", "d", {"ingress": [null, {"from_port": 22}]}, {"unknown": ["ingress.0"]})
	tf.block_paths(dynamic, ["ingress"]) == [["ingress", 0], ["ingress", 1]]
	tf.is_unknown(dynamic, ["ingress", 0, "cidr_blocks"])
	whole := testing.resource_with("aws_security_group", "w", {}, {"unknown": ["ingress"]})
	tf.block_paths(whole, ["ingress"]) == [["ingress"]]
}

test_booleans_written_as_strings_are_understood if {
	tf.is_true(true)
	tf.is_true("True")
	not tf.is_true("false")
	tf.is_false("false")
	not tf.is_false(null)
}

# --- the catalogue ---

test_resource_tagged_app_pos_belongs_to_pos if {
	r := testing.resource("aws_s3_bucket", "b", {"tags": {"app": "pos", "Name": "x"}})
	tf.apps_of(r) == {"pos"}
	tf.classification("pos") == "pci"
	tf.app_label("pos") == "app pos, pci"
}

test_provider_default_tags_in_tags_all_count if {
	r := testing.resource("aws_s3_bucket", "b", {"tags": {}, "tags_all": {"app": "wms"}})
	tf.apps_of(r) == {"wms"}
}

test_unknown_app_tag_is_not_treated_as_an_app_resource if {
	r := testing.resource_with("aws_s3_bucket", "b", {"tags": {"Name": "x"}}, {"unknown": ["tags.app"]})
	tf.apps_of(r) == set()
	whole := testing.resource_with("aws_s3_bucket", "c", {}, {"unknown": ["tags"]})
	tf.apps_of(whole) == set()
}

test_untagged_and_other_app_resources_are_not_catalogue_apps if {
	tf.apps_of(testing.resource("aws_s3_bucket", "b", {})) == set()
	tf.apps_of(testing.resource("aws_s3_bucket", "c", {"tags": null})) == set()
	tf.apps_of(testing.resource("aws_s3_bucket", "d", {"tags": {"app": "payroll"}})) == set()
}

test_apps_added_to_the_catalogue_are_picked_up if {
	r := testing.resource("aws_s3_bucket", "b", {"tags": {"app": "payroll"}})
	catalogue := {"apps": {"payroll": {"classification": "pci", "terraform_tags": {"app": "payroll"}}}}
	tf.apps_of(r) == {"payroll"} with data.portcullis.catalogue as catalogue
}

test_gateway_security_group_is_recognised_by_its_tags if {
	tf.is_gateway(testing.resource("aws_security_group", "gw", {"tags": {"role": "portcullis-gateway"}}))
	web := testing.resource("aws_security_group", "x", {"tags": {"role": "web"}})
	not tf.is_gateway(web)
	tf.gateway_tags_text == "role=portcullis-gateway"
}

# --- references ---

test_reference_links_to_the_resource_it_names if {
	bucket := testing.resource("aws_s3_bucket", "data", {})
	other := testing.resource("aws_s3_bucket", "data_logs", {})
	att := testing.resource_with("aws_s3_bucket_logging", "l", {}, {"refs": {"bucket": ["aws_s3_bucket.data"]}})
	tf.refers_to(att, "bucket", bucket)
	not tf.refers_to(att, "bucket", other)
}

test_reference_with_attribute_or_instance_key_still_links if {
	plan_bucket := testing.resource("aws_s3_bucket", "this[0]", {})
	att := testing.resource_with("aws_s3_bucket_logging", "l", {}, {"refs": {"bucket": ["aws_s3_bucket.this.id"]}})
	tf.refers_to(att, "bucket", plan_bucket)
	hcl_bucket := testing.resource("aws_s3_bucket", "this", {})
	keyed := testing.resource_with("aws_s3_bucket_logging", "k", {}, {"refs": {"bucket": ["aws_s3_bucket.this[0]"]}})
	tf.refers_to(keyed, "bucket", hcl_bucket)
	other_instance := testing.resource("aws_s3_bucket", "this[1]", {})
	not tf.refers_to(keyed, "bucket", other_instance)
}

test_reference_inside_a_module_is_relative_to_it if {
	bucket := object.union(testing.resource("aws_s3_bucket", "this", {}), {"address": "module.store.aws_s3_bucket.this", "module": "module.store"})
	att := testing.resource_with("aws_s3_bucket_logging", "l", {}, {"module": "module.store", "refs": {"bucket": ["aws_s3_bucket.this"]}})
	tf.refers_to(att, "bucket", bucket)
}

test_nested_reference_keys_are_found_under_their_block if {
	sg := testing.resource_with("aws_security_group", "app", {}, {"refs": {"ingress.0.security_groups": ["aws_security_group.gw"]}})
	tf.refs(sg, "ingress") == {"aws_security_group.gw"}
	tf.refs(sg, "ingress_rules") == set()
}

test_bucket_attachment_by_reference_or_literal_name if {
	bucket := testing.resource("aws_s3_bucket", "data", {"bucket": "acme-data"})
	by_ref := testing.resource_with("aws_s3_bucket_logging", "a", {}, {"refs": {"bucket": ["aws_s3_bucket.data"]}, "unknown": ["bucket"]})
	by_name := testing.resource("aws_s3_bucket_logging", "b", {"bucket": "acme-data"})
	elsewhere := testing.resource("aws_s3_bucket_logging", "c", {"bucket": "someone-else"})
	tf.attached_to_bucket(by_ref, bucket)
	tf.attached_to_bucket(by_name, bucket)
	not tf.may_be_attached_to_bucket(elsewhere, bucket) with input as testing.document([bucket, elsewhere])
}

test_attachment_to_an_unresolvable_bucket_may_be_any_bucket if {
	bucket := testing.resource("aws_s3_bucket", "data", {"bucket": "acme-data"})
	att := testing.resource_with("aws_s3_bucket_logging", "l", {}, {"unknown": ["bucket"], "refs": {"bucket": ["module.buckets"]}})
	tf.bucket_has(bucket, "aws_s3_bucket_logging") with input as testing.document([bucket, att])
}

test_list_value_accepts_a_single_string_where_a_list_is_expected if {
	r := testing.resource("aws_security_group_rule", "r", {"cidr_blocks": "0.0.0.0/0", "ipv6_cidr_blocks": null})
	tf.list_value(r, ["cidr_blocks"]) == ["0.0.0.0/0"]
	tf.list_value(r, ["ipv6_cidr_blocks"]) == []
	tf.list_value(r, ["prefix_list_ids"]) == []
}

test_targets_resolved_by_the_scanner_are_looked_up_not_matched if {
	bucket := testing.resource("aws_s3_bucket", "data", {})
	other := testing.resource("aws_s3_bucket", "other", {})
	att := testing.resource_with("aws_s3_bucket_logging", "l", {}, {
		"refs": {"bucket": ["aws_s3_bucket.data.id"]},
		"targets": {"bucket": ["aws_s3_bucket.data"]},
	})
	tf.refers_to(att, "bucket", bucket)
	not tf.refers_to(att, "bucket", other)
	tf.targets(att, "bucket") == {"aws_s3_bucket.data"} with input as testing.document([bucket, other, att])
	tf.resource_at["aws_s3_bucket.other"] == other with input as testing.document([bucket, other, att])
	tf.bucket_has(bucket, "aws_s3_bucket_logging") with input as testing.document([bucket, other, att])
	not tf.bucket_has(other, "aws_s3_bucket_logging") with input as testing.document([bucket, other, att])
}

test_unknown_at_names_the_first_unknown_path if {
	r := testing.resource_with("aws_lb_listener", "l", {}, {"unknown": ["ssl_policy"]})
	tf.unknown_at(r, [["protocol"], ["ssl_policy"]]) == "ssl_policy"
	not tf.unknown_at(r, [["protocol"]])
}

test_tags_under_keys_the_catalogue_does_not_use_match_no_app if {
	tf.apps_of(testing.resource("aws_s3_bucket", "b", {"tags": {"team": "pos", "Name": "pos"}})) == set()
	tf.apps_of(testing.resource("aws_s3_bucket", "c", {"tags": {"team": "x"}, "tags_all": {"app": "pos"}})) == {"pos"}
	r := testing.resource("aws_s3_bucket", "d", {"tags": {"team": "payroll"}})
	catalogue := {"apps": {"payroll": {"classification": "pci", "terraform_tags": {"team": "payroll"}}}}
	tf.apps_of(r) == {"payroll"} with data.portcullis.catalogue as catalogue
}

test_references_anything_sees_refs_and_resolved_targets if {
	none := testing.resource("aws_security_group", "a", {})
	not tf.references_anything(none)
	tf.references_anything(testing.resource_with("aws_security_group", "b", {}, {"refs": {"vpc_id": ["aws_vpc.main.id"]}}))
	tf.references_anything(testing.resource_with("aws_security_group", "c", {}, {"refs": {}, "targets": {"vpc_id": ["aws_vpc.main"]}}))
	odd := testing.resource_with("aws_security_group", "d", {}, {"refs": null, "targets": "x"})
	not tf.references_anything(odd)
}

# --- incomplete maps and lists (merge() or concat() with an unknown argument) ---

test_an_incomplete_map_is_unknown_but_the_keys_it_certainly_has_are_known if {
	r := testing.resource_with("aws_db_instance", "db", {"tags": {"app": "pos", "team": null}}, {"incomplete": ["tags"]})
	tf.is_unknown(r, ["tags"])
	not tf.value(r, ["tags"])
	tf.value(r, ["tags", "app"]) == "pos"
	not tf.is_unknown(r, ["tags", "app"])

	# A key set to null is certainly null; any key it does not show may be
	# among those the scanner can't name.
	not tf.is_unknown(r, ["tags", "team"])
	tf.is_unknown(r, ["tags", "owner"])
	tf.is_unknown(r, ["tags", "owner", "name"])
	not tf.is_unknown(r, ["name"])
}

test_an_incomplete_map_makes_a_resource_the_apps_only_by_a_certain_tag if {
	pos := testing.resource_with("aws_db_instance", "a", {"tags": {"app": "pos"}}, {"incomplete": ["tags"]})
	tf.apps_of(pos) == {"pos"}

	# app may be overridden: it is unknown, and the map shows no value for it.
	unsure := testing.resource_with("aws_db_instance", "b", {"tags": {}}, {"incomplete": ["tags"], "unknown": ["tags.app"]})
	tf.apps_of(unsure) == set()
	tf.is_unknown(unsure, ["tags", "app"])
}

test_an_incomplete_list_gives_its_certain_elements_and_stays_unknown_whole if {
	r := testing.resource_with("aws_security_group_rule", "r", {"cidr_blocks": ["0.0.0.0/0"]}, {"incomplete": ["cidr_blocks"]})
	tf.list_value(r, ["cidr_blocks"]) == ["0.0.0.0/0"]
	tf.is_unknown(r, ["cidr_blocks"])
	not tf.value(r, ["cidr_blocks"])
	not tf.is_unknown(r, ["cidr_blocks", 0])
	tf.is_unknown(r, ["cidr_blocks", 1])
	tf.unknown_at(r, [["cidr_blocks"], ["cidr_blocks", 0]]) == "cidr_blocks"
	tf.has_unknown_anywhere(r)
	known := testing.resource("aws_security_group_rule", "s", {"cidr_blocks": ["10.0.0.0/8"]})
	not tf.has_unknown_anywhere(known)
}

test_incomplete_blocks_keep_a_path_for_those_the_scanner_cant_name if {
	r := testing.resource_with("aws_security_group", "sg", {"ingress": [{"from_port": 22}]}, {"incomplete": ["ingress"]})
	tf.block_paths(r, ["ingress"]) == [["ingress", 0], ["ingress"]]
	tf.value(r, ["ingress", 0, "from_port"]) == 22
	tf.is_unknown(r, ["ingress", "cidr_blocks"])
	tf.is_unknown(r, ["ingress", 1, "cidr_blocks"])
	tf.has_unknown_within(r, ["ingress"])
	count(tf.blocks(r, ["ingress"])) == 1

	# A list nested in a known block: the block's other values are known.
	nested := testing.resource_with("aws_security_group", "n", {"ingress": [{"from_port": 22, "cidr_blocks": []}]}, {"incomplete": ["ingress.0.cidr_blocks"]})
	tf.has_unknown_within(nested, ["ingress"])
	not tf.is_unknown(nested, ["ingress"])
	not tf.is_unknown(nested, ["ingress", 0, "from_port"])
	tf.is_unknown(nested, ["ingress", 0, "cidr_blocks"])
	tf.block_paths(nested, ["ingress"]) == [["ingress", 0]]
}

# An incomplete tags map may hold the gateway's role tag unless it shows one.
test_incomplete_tags_may_make_a_resource_the_gateway if {
	maybe := testing.resource_with("aws_lb", "a", {"tags": {"app": "pos"}}, {"incomplete": ["tags"]})
	tf.may_be_gateway(maybe)
	tf.gateway_unknown_at(maybe) == "tags.role"
	not tf.is_gateway(maybe)

	web := testing.resource_with("aws_lb", "b", {"tags": {"app": "pos", "role": "web"}}, {"incomplete": ["tags"]})
	not tf.may_be_gateway(web)

	gateway := testing.resource_with("aws_lb", "c", {"tags": {"role": "portcullis-gateway"}}, {"incomplete": ["tags"]})
	tf.is_gateway(gateway)
	not tf.may_be_gateway(gateway)

	# A tag that is unknown in a complete map is as before: not the gateway.
	known := testing.resource_with("aws_lb", "d", {"tags": {"app": "pos"}}, {"unknown": ["tags.role"]})
	not tf.may_be_gateway(known)
}
