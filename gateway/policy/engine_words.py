"""The words of the policy engines' error messages: all of a failed decision's
error message that its event may show, besides the policy's own locations.

Harvested from regorus' built-ins and interpreter (the sentences they raise and
the crates they quote: std's address parser, chrono, base64, serde_json, regex),
OPA's built-in error codes and Portcullis' own failures. A word of a message not
here is what the engine quoted, so from the request, and is masked: a word the
engine gains in a later release is masked too until it is added, which costs
the SIEM a word and never lets a value through.
"""

_WORDS = """
    AM ANSIC CIDR CIDRs CPU Caused Could DateOnly DateTime DayOfMonth DayOfWeek Domain
    Duration EOF Element Error Expected FEB Failed Feb Found Friday Go Got Group IP
    Invalid JSON Jan January Kitchen Local Loop LoopIndex MST Mon Monday NaN Nano Number
    OPA PM PST Parameter Patch RFC RubyDate Saturday Stamp StampMicro StampMilli
    StampNano Sunday THU This Thu Thursday TimeOnly Tuesday UTC UnixDate Valid Wed
    Wednesday YearDay a abs active add add_date added address after allocator allow
    allowed already am an and answer answered any_prefix_match any_suffix_match are
    argument arguments arithexpr array as assignexpr assignment at attribute
    azure_policy bad base be binding binexpr bits bool boolean boolexpr bounds bug
    builtin_sets builtins but by byte cache call can cannot case ceil char character
    characters cidr cidr_contains cidr_expand cidr_is_valid class clock clocksequence
    code collection column comma commit compare compilation compiled complete components
    composite comps concat conflict conflicts construction contains context control
    convert copy could count coverage cst current custom cyclic dangling data date
    datetime decimal decision decode decode_object deemed deep default defined
    definition deleted delimiters depends deserialize detected determine diff difference
    digit disappeared divide division document does domain dot duplicated duration edt
    eib element elements empty encode encode_no_pad encode_object end ends_with endswith
    enough entry env equal error escape est eval_builtin_error eval_conflict_error
    eval_error eval_rule_bodies eval_type_error evaluating evaluation exceeded exist
    existent expected expects expr expr_idx expression extension extensions extra fail
    failed failure false features feb fields filter find find_all_string_submatch_n
    find_n flag float floating floor following for format format_int found from function
    functions gb generated get gi gib glob global gmt got graph group header headers
    here hex hoisting http https id ident import impossible in incorrect indent index
    indexed indexing indexof indexof_n indices info information initial input inputs
    inserted inside instead int integer internal intersection intn invalid is is_array
    is_boolean is_null is_number is_object is_set is_string is_valid item json jsonpatch
    jsonschema kb key keys keyword ki kib large last leading leak least left length
    likely limit limits line list literal literals local lone loop lower lsh
    macvariables make marshal marshal_with_options marshaling match match_schema
    matching max mb mdt membership memory mi mib microsecond millisecond min mismatch
    missing modifier module module_idx modulo move ms mst multicast multiple must names
    nanosecond negate negative neighbors net next no node nodeid non not now_ns ns null
    number numbers numeric object objects of offset on one only op opa operand operation
    operator option or orexpr out output outputs outside over overflow padding param
    parameter parameters params parse parse_bytes parse_duration_ns parse_ns parse_rfc
    parsing patch path paths pattern pb pdt phase pi pib placeholder plan pm point
    policy popped positive possible prefix premature pretty previous previously print
    produce produced product pst query quote_meta rand range range_step reachable
    reachable_paths reasons recursion redundant ref regex rego regorus remove render
    repetition replace replace_n requires resource result returned reverse rfc root
    round rsh rule rules runtime rvm same scalar schedule scheduled schema scope scopes
    segments semver send sent separated separator sequence serialize set sets should
    simple single sleep slice some sort spaces specified split sprintf startswith
    statement statements std step string strings subnet subset substring succeed sum
    supplied supported supports surrogate survive symbol syntax table target tb
    template_match test the thu ti tib time timeout times to to_big to_number token too
    took trace trailing tree trim trim_left trim_prefix trim_right trim_space
    trim_suffix true two type type_name unary unaryexpr unclosed undefined unexpected
    unhandled unicast unicode union union_n unique unit units unknown unmarshal
    unreachable unrecognized unsafe unsupported upper upto url urlquery used using uuid
    valid value values var variable variant verb verbs verify_schema verm version
    vertices walk warning was weekday when while width with without xor yaml year yi yib
    zero zeros zi zib
    step_up http_status valid_until_ns HTTP name control sets this only gateway hold
"""
ENGINE_WORDS = frozenset(_WORDS.split())
