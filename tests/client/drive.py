"""Create, read, list and delete a VM through the client openapi-python-client
generated from /openapi.json (tests/client.rs), and nothing else: only its
functions and models, so every answer must parse as the document says.

The generated models check little themselves (a string where the document
says integer passes, and fields the document does not declare land in
`additional_properties`), so each answer is also checked here against the
model's own annotations, and its model written back must equal the JSON body.

Usage: drive.py BASE_URL, with the bearer token in VMPLANE_TOKEN. Exits 1,
saying what differed, on the first mismatch.
"""

import datetime
import enum
import json
import os
import sys
import time
import types
import typing

import attrs
import httpx

from vmplane_client import AuthenticatedClient, models
from vmplane_client.api.operations import get_operation
from vmplane_client.api.vms import create_vm, delete_vm, get_vm, list_vms
from vmplane_client.models import CreateVmRequest, ErrorBody, Operation, OpStatus, PageVmView, VmAccepted, VmStatus, VmView
from vmplane_client.types import Response

VM_NAME = "client-1"
# Upper bound of each wait for the VM to reach a status.
WAIT_SECONDS = 60
# A well-formed VM id no VM has.
UNKNOWN_VM_ID = "vm_00000000000000000000000000"


class Mismatch(Exception):
    """An answer that is not what the document and the API promise."""


def expect(holds: bool, what: str) -> None:
    if not holds:
        raise Mismatch(what)


def type_problems(value: typing.Any, hint: typing.Any, path: str) -> list[str]:
    """Where `value` is not of the annotated type `hint` (recursing into models, lists and maps)."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        if any(not type_problems(value, alternative, path) for alternative in typing.get_args(hint)):
            return []
        return [f"{path}: {value!r} is none of {hint}"]
    if origin is list:
        if not isinstance(value, list):
            return [f"{path}: {value!r} is not a list"]
        (item_hint,) = typing.get_args(hint)
        return [p for i, item in enumerate(value) for p in type_problems(item, item_hint, f"{path}[{i}]")]
    if origin is dict:
        if not isinstance(value, dict):
            return [f"{path}: {value!r} is not a map"]
        key_hint, value_hint = typing.get_args(hint)
        return [p for k, v in value.items() for p in type_problems(k, key_hint, f"{path} key") + type_problems(v, value_hint, f"{path}[{k!r}]")]
    if hint is typing.Any:
        return []
    if hint is type(None):
        return [] if value is None else [f"{path}: {value!r} is not null"]
    if attrs.has(hint):
        return model_problems(value, path) if isinstance(value, hint) else [f"{path}: {value!r} is not a {hint.__name__}"]
    if hint in (int, float):
        # bool is an int to Python, not to JSON Schema.
        numeric = (int,) if hint is int else (int, float)
        return [] if isinstance(value, numeric) and not isinstance(value, bool) else [f"{path}: {value!r} is not {hint.__name__}"]
    if isinstance(hint, type) and (issubclass(hint, (str, bool, datetime.datetime, enum.Enum)) or hint.__name__ == "Unset"):
        return [] if isinstance(value, hint) else [f"{path}: {value!r} is not {hint.__name__}"]
    return [f"{path}: no check for the annotation {hint}"]


def model_problems(model: typing.Any, path: str) -> list[str]:
    """Where a generated model's fields are not of their annotated types, or it holds fields the document does not declare."""
    cls = type(model)
    hints = typing.get_type_hints(cls, globalns={**vars(sys.modules[cls.__module__]), **vars(models)})
    declared = [f.name for f in attrs.fields(cls) if f.name != "additional_properties"]
    found = [p for name in declared for p in type_problems(getattr(model, name), hints[name], f"{path}.{name}")]
    # Models of `additionalProperties: false` have none: what they drop, the body comparison finds.
    if "additional_properties" not in hints:
        return found
    if declared and model.additional_properties:
        found.append(f"{path}: fields the document does not declare: {sorted(model.additional_properties)}")
    return found + type_problems(model.additional_properties, hints["additional_properties"], f"{path}.*")


def json_differences(ours: typing.Any, theirs: typing.Any, path: str) -> list[str]:
    """Where the model written back (`ours`) differs from the body received (`theirs`); instants compare as instants."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        return [
            d for key in sorted(ours.keys() | theirs.keys()) for d in json_differences(ours.get(key, "<absent>"), theirs.get(key, "<absent>"), f"{path}.{key}")
        ]
    if isinstance(ours, list) and isinstance(theirs, list) and len(ours) == len(theirs):
        return [d for i, (a, b) in enumerate(zip(ours, theirs)) for d in json_differences(a, b, f"{path}[{i}]")]
    if type(ours) is type(theirs) and ours == theirs:
        return []
    if isinstance(ours, str) and isinstance(theirs, str) and "T" in theirs:
        try:
            if datetime.datetime.fromisoformat(ours) == datetime.datetime.fromisoformat(theirs):
                return []
        except ValueError:
            pass
    return [f"{path}: the model says {ours!r}, the body {theirs!r}"]


def parsed(response: Response, status: int, model_type: type, what: str) -> typing.Any:
    """The answer's model, after checking its status, its type, its fields and that it is the whole body."""
    body = response.content.decode(errors="replace")
    expect(response.status_code == status, f"{what}: status {int(response.status_code)}, expected {status}: {body}")
    model = response.parsed
    expect(isinstance(model, model_type), f"{what}: parsed as {type(model).__name__}, expected {model_type.__name__}: {body}")
    problems = model_problems(model, model_type.__name__) + json_differences(model.to_dict(), json.loads(response.content), model_type.__name__)
    expect(not problems, f"{what}: the {model_type.__name__} does not match the document or the body:\n  " + "\n  ".join(problems) + f"\nbody: {body}")
    return model


def wait_operation(client: AuthenticatedClient, operation: Operation, what: str) -> Operation:
    """The operation once finished (long polls of GET /v1/operations/{id}?wait=...), which must have succeeded."""
    deadline = time.monotonic() + WAIT_SECONDS
    while operation.status not in (OpStatus.SUCCEEDED, OpStatus.FAILED):
        expect(time.monotonic() < deadline, f"{what}: operation {operation.id} still {operation.status} after {WAIT_SECONDS} s")
        operation = parsed(get_operation.sync_detailed(operation.id, client=client, wait=20), 200, Operation, f"GET /v1/operations/{operation.id}?wait=20")
    expect(operation.status == OpStatus.SUCCEEDED, f"{what}: operation {operation.id} {operation.status}: {operation.error}")
    return operation


def wait_vm_status(client: AuthenticatedClient, vm_id: str, status: VmStatus) -> VmView:
    """The VM once GET /v1/vms/{id} shows `status`, polled for at most WAIT_SECONDS."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        vm = parsed(get_vm.sync_detailed(vm_id, client=client), 200, VmView, f"GET /v1/vms/{vm_id}")
        if vm.status == status:
            return vm
        expect(time.monotonic() < deadline, f"VM {vm_id} is {vm.status} after {WAIT_SECONDS} s, expected {status}: {vm.message}")
        time.sleep(0.2)


def listed(client: AuthenticatedClient, name: str) -> list[typing.Any]:
    """The VMs named `name` in GET /v1/vms?name=..., checked against the page's count."""
    page = parsed(list_vms.sync_detailed(client=client, name=name), 200, PageVmView, f"GET /v1/vms?name={name}")
    expect(page.pagination.total_items == len(page.data), f"GET /v1/vms?name={name}: total_items {page.pagination.total_items} but {len(page.data)} items")
    return page.data


def drive(client: AuthenticatedClient) -> None:
    accepted = parsed(create_vm.sync_detailed(client=client, body=CreateVmRequest(name=VM_NAME)), 202, VmAccepted, "POST /v1/vms")
    expect(accepted.name == VM_NAME, f"POST /v1/vms: name {accepted.name!r}, expected {VM_NAME!r}")
    expect(accepted.status == VmStatus.PENDING, f"POST /v1/vms: status {accepted.status}, expected pending")
    expect(accepted.operation.kind == "create" and accepted.operation.target_id == accepted.id, f"POST /v1/vms: operation {accepted.operation}")
    vm_id = accepted.id
    print(f"created {vm_id}, operation {accepted.operation.id}")

    wait_operation(client, accepted.operation, "create")
    running = wait_vm_status(client, vm_id, VmStatus.RUNNING)
    expect((running.id, running.name) == (vm_id, VM_NAME), f"GET /v1/vms/{vm_id}: id {running.id!r}, name {running.name!r}")
    expect(running.started_at is not None, f"GET /v1/vms/{vm_id}: running without started_at")
    print(f"{vm_id} is running")

    found = listed(client, VM_NAME)
    expect([(v.id, v.status) for v in found] == [(vm_id, VmStatus.RUNNING)], f"GET /v1/vms?name={VM_NAME}: {[(v.id, v.status) for v in found]}")

    deleting = parsed(delete_vm.sync_detailed(vm_id, client=client), 202, VmAccepted, f"DELETE /v1/vms/{vm_id}")
    expect(deleting.id == vm_id, f"DELETE /v1/vms/{vm_id}: answered for {deleting.id}")
    expect(deleting.status in (VmStatus.DELETING, VmStatus.DELETED), f"DELETE /v1/vms/{vm_id}: status {deleting.status}")
    expect(deleting.operation.kind == "delete" and deleting.operation.target_id == vm_id, f"DELETE /v1/vms/{vm_id}: operation {deleting.operation}")
    wait_operation(client, deleting.operation, "delete")

    # A deleted VM stays readable with status `deleted`; a 404 would say gone as well.
    after = get_vm.sync_detailed(vm_id, client=client)
    if after.status_code == 404:
        gone = parsed(after, 404, ErrorBody, f"GET /v1/vms/{vm_id} after the delete")
        expect(gone.code == "not_found", f"GET /v1/vms/{vm_id} after the delete: code {gone.code!r}")
    else:
        deleted = parsed(after, 200, VmView, f"GET /v1/vms/{vm_id} after the delete")
        expect(deleted.status == VmStatus.DELETED, f"GET /v1/vms/{vm_id} after the delete: status {deleted.status}")
    expect(listed(client, VM_NAME) == [], f"GET /v1/vms?name={VM_NAME} still lists the deleted VM")
    print(f"{vm_id} is deleted")

    unknown = parsed(get_vm.sync_detailed(UNKNOWN_VM_ID, client=client), 404, ErrorBody, f"GET /v1/vms/{UNKNOWN_VM_ID}")
    expect(unknown.code == "not_found", f"GET /v1/vms/{UNKNOWN_VM_ID}: code {unknown.code!r}")


def main() -> int:
    (base_url,) = sys.argv[1:]
    # Long polls wait up to 20 s; an undocumented status raises.
    client = AuthenticatedClient(base_url=base_url, token=os.environ["VMPLANE_TOKEN"], timeout=httpx.Timeout(40.0), raise_on_unexpected_status=True)
    try:
        with client:
            drive(client)
    except Mismatch as mismatch:
        print(f"MISMATCH: {mismatch}", file=sys.stderr)
        return 1
    print("create, get, list and delete through the generated client: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
