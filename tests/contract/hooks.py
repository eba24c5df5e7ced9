"""Formats of the vmplane OpenAPI documents that JSON Schema cannot spell out,
taught to schemathesis so its generated requests are the ones the documents
allow (tests/contract.rs loads this through schemathesis.toml).

Each strategy draws only values the format admits, so a refusal of one is a
real disagreement between a document and the server.
"""

import json

import schemathesis
from hypothesis import strategies as st

# Real public keys (their private halves were thrown away): a key's base64
# must decode to a key of its algorithm, which no pattern can say.
PUBLIC_KEYS = [
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMyPw/Ek8kljQRMbjQhkvBNO3jkofPGDRZ/d+1joRfqG fuzz-ed25519",
    "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBN0RuwCQlD9+lfdwHCm0K2J+F46m0bxN6JtLWm5lXn/Sacx8jLsPfasBUymfiOLMkEcMiOxmh5zMMx51zrHAdgc= fuzz-ecdsa",
    "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQCznAcxMmsLgHbf+pBYxL/3wRmF42bMNkmMT3r1xkCMldWQP+RfdJW2c/oqxWh+0N0drKuFn/WiO3bmIbI5WiVavhT44jc1ReZ83a3D8J4BONrwwg0opn3irbVP+6vrusmu86e3tUoDHwzBccF3sUMA8In/MRLRFv5EBgqP+LElPQ//oO228haQpqUoZ6RXNRWEFo/VUaYh32r/Fyw6sulb0VOxIRW2qenNdlF74QHVqpT0EmGJk2i7FXi9/FDlhI6LLg81BfDYrNPveM53iWcGMepi65iOz19XJU2AQl4fh+rUYknLfphh/gtKluDky+HYtHChBT4Ffi8DQQXWcqUx fuzz-rsa",
]


def with_comment(key, comment):
    """`key` with another comment: the same key material, another string."""
    return f"{key.rsplit(' ', 1)[0]} {comment}"


# Distinct strings, so a list that must hold each key once can be long.
schemathesis.openapi.format(
    "openssh-public-key",
    st.builds(with_comment, st.sampled_from(PUBLIC_KEYS), st.from_regex(r"[a-z0-9-]{1,16}", fullmatch=True)),
)

# Webhook URLs on loopback only (the contract stack allows private
# addresses and runs no deliverer, so nothing is ever sent; a generated
# public host would still be a name to resolve, which tests must not do).
schemathesis.openapi.format(
    "webhook-url",
    st.builds(
        lambda scheme, port, path: f"{scheme}://127.0.0.1:{port}/{path}",
        st.sampled_from(["http", "https"]),
        st.integers(min_value=1, max_value=65535),
        st.from_regex(r"[a-z0-9_-]{0,12}(/[a-z0-9_-]{1,12}){0,3}", fullmatch=True),
    ),
)

# Names that are a deployment's configuration rather than the document's:
# the contract stack runs the default catalog (docs/catalog.md) with one
# sim host, which serves the default region and has the default image.
schemathesis.openapi.format("region", st.just("us-east"))
schemathesis.openapi.format("plan", st.sampled_from(["nano", "micro", "small", "medium"]))
schemathesis.openapi.format("image", st.just("debian-minimal"))

# What a create may ask of the fleet is the deployment's configuration, not
# the document's: a host port must be in the range its host forwards from
# (`port_range` in GET /v1/hosts: the worker's --port-range, 20000-29999 on
# the contract stack), and bridge networking needs a host with a bridge
# (worker --bridge; the contract stack has none). Valid host ports are moved
# into that range and bridge mode becomes user mode, in requests meant to be
# valid; the negative tests are left as they are. A create naming a template
# that does not exist is 422 `unknown_template`, and the fuzzer cannot name
# one that does (it creates none first), so valid creates name none.
HOST_PORTS = range(20000, 30000)

# And what JSON Schema cannot say (the document says it in words): a VM's
# data disks have distinct names, its volumes distinct ids other than its
# root volume's, and it has at most 8 of the two together; a guest port and
# protocol, and a host port, are forwarded once; no word of its boot
# arguments (quotes aside) is `--` or starts with `vmplane.`. Valid creates
# keep the first of each, the first 8, and the other words.
MAX_DISKS = 8


def allowed_boot_args(args):
    if not isinstance(args, str):
        return args
    reserved = lambda w: w.replace('"', "") == "--" or w.replace('"', "").startswith("vmplane.")
    return " ".join(w for w in args.split() if not reserved(w)) if any(reserved(w) for w in args.split()) else args


def whole(value):
    """A whole float as the integer it is to JSON Schema and the server."""
    return int(value) if type(value) is float and value.is_integer() else value


def first_of_each(items, *keys, defaults=None):
    """The items of a list, without those whose `keys` (a missing one taking
    its value from `defaults`) repeat an earlier item's; an item with none
    of the keys is kept."""
    if not isinstance(items, list):
        return items
    seen, kept = set(), []
    for item in items:
        if not isinstance(item, dict) or all(item.get(key) is None for key in keys):
            kept.append(item)
            continue
        k = tuple(json.dumps(whole(item.get(key, (defaults or {}).get(key))), sort_keys=True) for key in keys)
        if k not in seen:
            seen.add(k)
            kept.append(item)
    return kept


def on_valid_cases(**operations):
    """Registers `fix(case)` for the valid cases of `operations` (filters as
    `apply_to` takes them) in every phase that makes them: `map_case` does
    not see the examples phase, `before_add_examples` does. Invalid cases
    stay as generated: the server must refuse them as they are."""

    def register(fix):
        def valid_only(context, case):
            if case.meta is None or case.meta.generation.mode.is_positive:
                fix(case)
            return case

        def examples(context, cases):
            for case in cases:
                valid_only(context, case)

        schemathesis.hook("map_case").apply_to(**operations)(valid_only)
        schemathesis.hook("before_add_examples").apply_to(**operations)(examples)
        return fix

    return register


@on_valid_cases(method="POST", path="/v1/vms")
def what_the_contract_stack_offers(case):
    if isinstance(case.body, dict):
        case.body.pop("template", None)
        if "boot_args" in case.body:
            case.body["boot_args"] = allowed_boot_args(case.body["boot_args"])
        disks = first_of_each(case.body.get("data_disks"), "name")
        volumes = first_of_each(case.body.get("volumes"), "volume_id")
        if isinstance(volumes, list):
            root = case.body.get("root_volume_id")
            volumes = [v for v in volumes if not (isinstance(v, dict) and root is not None and v.get("volume_id") == root)]
        if isinstance(disks, list):
            case.body["data_disks"] = disks[:MAX_DISKS]
        if isinstance(volumes, list):
            room = MAX_DISKS - len(case.body.get("data_disks") or []) if isinstance(disks, list) else MAX_DISKS
            case.body["volumes"] = volumes[: max(room, 0)]
    network = case.body.get("network") if isinstance(case.body, dict) else None
    if isinstance(network, dict) and network.get("mode") == "bridge":
        network["mode"] = "user"
        network.pop("guest_ip", None)
    forwards = case.body.get("port_forwards") if isinstance(case.body, dict) else None
    if isinstance(forwards, list):
        for forward in forwards:
            port = whole(forward.get("host_port")) if isinstance(forward, dict) else None
            if type(port) is int and 1 <= port <= 65535 and port not in HOST_PORTS:
                forward["host_port"] = HOST_PORTS[port % len(HOST_PORTS)]
        # Each guest port and protocol once (TCP when unsaid), each host port once.
        tcp = {"protocol": "tcp"}
        case.body["port_forwards"] = first_of_each(first_of_each(forwards, "guest_port", "protocol", defaults=tcp), "host_port")
    if isinstance(case.body, dict) and "exposed_ports" in case.body:
        case.body["exposed_ports"] = first_of_each(case.body["exposed_ports"], "port", "protocol", defaults={"protocol": "tcp"})
    return case


# Visor: an input names the org it acts in (`organizationId`, required by
# the seed for vm.all and vm.launch), and an org id is a ulid the fuzzer
# would have to guess: valid inputs act in the stack's default org, whose
# id is fixed (GET /v1/orgs). Other ids (a VM's, a volume's) stay
# generated: an unknown one is a documented 404.
DEFAULT_ORG = "org_00000000000000000000000000"


@on_valid_cases(path_regex=r"^/api/vm\.")
def visor_acts_in_the_stacks_org(case):
    for inputs in (case.query, case.body):
        if isinstance(inputs, dict) and "organizationId" in inputs:
            inputs["organizationId"] = DEFAULT_ORG
    return case


# NeevCloud: `plan_id` names the same catalog plan as `vm_config_id`
# (vmplane has one plan per VM; the document says so in words). Valid
# creates bill the plan they run, and name each data disk once. Its keys have the seed's pattern and must
# decode (`openssh-public-key`, which the coverage phase does not draw
# from): valid creates carry real keys of the seed's two types.
NEEVCLOUD_KEYS = [k for k in PUBLIC_KEYS if k.startswith(("ssh-rsa ", "ssh-ed25519 "))]
@on_valid_cases(method="POST", path_regex=r"^/api/v1/orgs/\{org_id\}/projects/\{project_id\}/vms$")
def neevcloud_bills_the_plan_it_runs(case):
    body = case.body
    if not isinstance(body, dict):
        return case
    if "vm_config_id" in body:
        body["plan_id"] = body["vm_config_id"]
    disks = body.get("data_disks")
    if isinstance(disks, dict):
        # Each created name once, each attached disk once and not the root disk.
        if "create_disks" in disks:
            disks["create_disks"] = first_of_each(disks["create_disks"], "name")
        root = body.get("root_disk").get("attach_disk_request") if isinstance(body.get("root_disk"), dict) else None
        root_id = root.get("disk_id") if isinstance(root, dict) else None
        attached = first_of_each(disks.get("attached_disks"), "disk_id")
        if isinstance(attached, list):
            disks["attached_disks"] = [a for a in attached if not (isinstance(a, dict) and root_id is not None and a.get("disk_id") == root_id)]
    if "exposed_ports" in body:
        body["exposed_ports"] = first_of_each(body["exposed_ports"], "port", "protocol")
    if isinstance(body.get("ssh_keys"), list):
        body["ssh_keys"] = [with_comment(NEEVCLOUD_KEYS[i % len(NEEVCLOUD_KEYS)], f"fuzz-{i}") for i in range(len(body["ssh_keys"]))]
    return case


# Hatch (/openapi/hatch.json): `guest_ip` asks for bridge networking, which
# needs a host with a bridge (the contract stack has none: 400), and a
# `template_id` must name a template that exists (the fuzzer creates none:
# 400), so valid creates name neither; `boot_args` loses the words the
# document's description forbids (as for /v1). The image is the `image`
# format above.
@on_valid_cases(method="POST", path="/vms")
def hatch_create_on_the_contract_stack(case):
    if isinstance(case.body, dict):
        case.body.pop("template_id", None)
        case.body.pop("guest_ip", None)
        if "boot_args" in case.body:
            case.body["boot_args"] = allowed_boot_args(case.body["boot_args"])
    return case



# hypeman (/openapi/hypeman.json): a size is text, so its bounds are in the
# document's words (JSON Schema has no bound on text): `size` a whole number
# of MB between 64MB and 4TB, `hotplug_size` a whole number of MB up to 4TB,
# `overlay_size` up to 65536GB (rounded up to GB), and no size so large it
# overflows. Valid creates keep a size within them and get hypeman's
# default otherwise. An attach's `volume_id`, when given, is the volume in
# its path (the document says so in words).
HYPEMAN_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
MIB, GIB, TIB = 1 << 20, 1 << 30, 1 << 40


def hypeman_bytes(text):
    """What hypeman/size.rs makes of a size the document's pattern admits."""
    if not isinstance(text, str):
        return None
    t = text.strip(" ")
    digits = len(t) - len(t.lstrip("0123456789"))
    if digits == 0:
        return None
    value = int(t[:digits]) * HYPEMAN_UNITS.get(t[digits:].strip(" ")[:1].lower(), 0)
    return value if value < 1 << 64 else None


def hypeman_size(body, field, fits, default):
    if field in body:
        size = hypeman_bytes(body[field])
        if size is None or not fits(size):
            body[field] = default


HYPEMAN_BODIES = r"^/instances(/\{id\}/volumes/\{volumeId\})?$"


@on_valid_cases(method="POST", path_regex=HYPEMAN_BODIES)
def hypeman_on_the_contract_stack(case):
    if not isinstance(case.body, dict):
        return case
    body = case.body
    hypeman_size(body, "size", lambda b: b % MIB == 0 and 64 * MIB <= b <= 4 * TIB, "1GB")
    hypeman_size(body, "hotplug_size", lambda b: b % MIB == 0 and b <= 4 * TIB, "1GB")
    hypeman_size(body, "overlay_size", lambda b: -(-b // GIB) <= 65536, "10GB")
    for mount in body.get("volumes") if isinstance(body.get("volumes"), list) else []:
        if isinstance(mount, dict):
            hypeman_size(mount, "overlay_size", lambda b: True, "1GB")
    if "mount_path" in body:
        hypeman_size(body, "overlay_size", lambda b: True, "1GB")
        if "volume_id" in body and isinstance(case.path_parameters, dict) and "volumeId" in case.path_parameters:
            body["volume_id"] = case.path_parameters["volumeId"]
    return case



# Marketplace (/openapi/marketplace.json): an `external_port` must be in
# the host node's port range (the deployment's: 20000-29999 on the contract
# stack) and forwarded by one instance once, and an instance forwards each
# `internal_port` once (the document says both in words). A `runcmd` line is
# at most 4096 bytes, which JSON Schema counts in characters. Valid creates
# keep the first forward of each port, external ports moved into the range,
# and each line's first 4096 bytes.
@on_valid_cases(method="POST", path="/api/v2/instances")
def marketplace_create_on_the_contract_stack(case):
    body = case.body
    if not isinstance(body, dict):
        return case
    data = body.get("data")
    attributes = data.get("attributes") if isinstance(data, dict) else None
    if not isinstance(attributes, dict):
        return case
    forwards = attributes.get("port_forwards")
    if isinstance(forwards, list):
        internal, external, kept = set(), set(), []
        for forward in forwards:
            if isinstance(forward, dict):
                port = whole(forward.get("external_port"))
                if type(port) is int and 1 <= port <= 65535 and port not in HOST_PORTS:
                    forward["external_port"] = port = HOST_PORTS[port % len(HOST_PORTS)]
                inner = json.dumps(whole(forward.get("internal_port")))
                if inner in internal or (port is not None and port in external):
                    continue
                internal.add(inner)
                if port is not None:
                    external.add(port)
            kept.append(forward)
        attributes["port_forwards"] = kept
    cloud_init = attributes.get("cloud_init")
    runcmd = cloud_init.get("runcmd") if isinstance(cloud_init, dict) else None
    if isinstance(runcmd, list):
        cloud_init["runcmd"] = [
            c.encode()[:4096].decode(errors="ignore") if isinstance(c, str) and len(c.encode()) > 4096 else c for c in runcmd
        ]
        cloud_init["runcmd"] = [c if not isinstance(c, str) or c.strip() else "true" for c in cloud_init["runcmd"]]
    return case
