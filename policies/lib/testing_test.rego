package portcullis.lib.testing_test

import rego.v1

import data.portcullis.lib.testing

test_resource_builds_the_scanner_shape if {
	r := testing.resource("aws_s3_bucket", "data", {"bucket": "d"})
	r.address == "aws_s3_bucket.data"
	r.type == "aws_s3_bucket"
	r.config.bucket == "d"
	r.unknown == []
	r.refs == {}
}

test_resource_with_adds_unknowns_and_refs if {
	r := testing.resource_with("aws_s3_bucket_logging", "l", {}, {
		"unknown": ["bucket"],
		"refs": {"bucket": ["aws_s3_bucket.data"]},
	})
	r.address == "aws_s3_bucket_logging.l"
	r.unknown == ["bucket"]
	r.refs.bucket == ["aws_s3_bucket.data"]
}
