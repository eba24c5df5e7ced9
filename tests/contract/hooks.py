"""Formats of the vmplane OpenAPI documents that JSON Schema cannot spell out,
taught to schemathesis so its generated requests are the ones the documents
allow (tests/contract.rs loads this through schemathesis.toml).

Each strategy draws only values the format admits, so a refusal of one is a
real disagreement between a document and the server.
"""

import schemathesis
from hypothesis import strategies as st

# Real public keys (their private halves were thrown away): a key's base64
# must decode to a key of its algorithm, which no pattern can say.
PUBLIC_KEYS = [
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMyPw/Ek8kljQRMbjQhkvBNO3jkofPGDRZ/d+1joRfqG fuzz-ed25519",
    "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBN0RuwCQlD9+lfdwHCm0K2J+F46m0bxN6JtLWm5lXn/Sacx8jLsPfasBUymfiOLMkEcMiOxmh5zMMx51zrHAdgc= fuzz-ecdsa",
    "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQCznAcxMmsLgHbf+pBYxL/3wRmF42bMNkmMT3r1xkCMldWQP+RfdJW2c/oqxWh+0N0drKuFn/WiO3bmIbI5WiVavhT44jc1ReZ83a3D8J4BONrwwg0opn3irbVP+6vrusmu86e3tUoDHwzBccF3sUMA8In/MRLRFv5EBgqP+LElPQ//oO228haQpqUoZ6RXNRWEFo/VUaYh32r/Fyw6sulb0VOxIRW2qenNdlF74QHVqpT0EmGJk2i7FXi9/FDlhI6LLg81BfDYrNPveM53iWcGMepi65iOz19XJU2AQl4fh+rUYknLfphh/gtKluDky+HYtHChBT4Ffi8DQQXWcqUx fuzz-rsa",
]

schemathesis.openapi.format("openssh-public-key", st.sampled_from(PUBLIC_KEYS))

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


#
# And what JSON Schema cannot say (the document says it in words): a VM's
# data disks have distinct names, its volumes distinct ids other than its
# root volume's, and it has at most 8 of the two together; no word of its
# boot arguments (quotes aside) is `--` or starts with `vmplane.`. Valid
# creates keep the first of each, the first 8, and the other words.
MAX_DISKS = 8


def allowed_boot_args(args):
    if not isinstance(args, str):
        return args
    reserved = lambda w: w.replace('"', "") == "--" or w.replace('"', "").startswith("vmplane.")
    return " ".join(w for w in args.split() if not reserved(w)) if any(reserved(w) for w in args.split()) else args


def first_of_each(items, key):
    if not isinstance(items, list):
        return items
    seen, kept = set(), []
    for item in items:
        k = item.get(key) if isinstance(item, dict) else None
        if k is None or k not in seen:
            seen.add(k)
            kept.append(item)
    return kept


@schemathesis.hook("map_case").apply_to(method="POST", path="/v1/vms")
def what_the_contract_stack_offers(context, case):
    if case.meta is not None and not case.meta.generation.mode.is_positive:
        return case
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
    for forward in forwards if isinstance(forwards, list) else []:
        port = forward.get("host_port") if isinstance(forward, dict) else None
        if type(port) is int and 1 <= port <= 65535 and port not in HOST_PORTS:
            forward["host_port"] = HOST_PORTS[port % len(HOST_PORTS)]
    return case
