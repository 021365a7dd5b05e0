"""The request schemas say what the gateway takes: checked in process against the parsers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from vrungpu_gateway.api.openapi import build_spec
from vrungpu_gateway.api.schemas import parse_task_spec
from vrungpu_gateway.api.uploads import MultipartSink
from vrungpu_gateway.engine.limits import RequestLimits
from vrungpu_gateway.errors import InvalidRequest


def _validator(spec: dict[str, Any], name: str) -> Draft202012Validator:
    registry: Registry[Any] = Registry().with_resource(
        "urn:spec", DRAFT202012.create_resource(spec)
    )
    return Draft202012Validator({"$ref": f"urn:spec#/components/schemas/{name}"}, registry=registry)


@pytest.fixture(scope="module")
def run_request() -> Draft202012Validator:
    return _validator(build_spec(gpu_count=2, limits=RequestLimits()), "RunRequest")


@pytest.mark.parametrize(
    "body",
    [
        {"code": "print(1)"},
        {"code": "x", "gpu_id": 1, "env": {"A_1": "b"}, "args": ["--x"], "timeout": 0.5},
        {"code": "x", "save_model": True, "model_name": "m", "requirements": ["numpy>=2"]},
        {"code": "x", "device": "cpu", "other": {"ignored": [1, "two", None]}},
    ],
)
def test_what_the_gateway_takes_is_schema_valid(
    run_request: Draft202012Validator, body: dict[str, Any]
) -> None:
    assert not list(run_request.iter_errors(body))
    parse_task_spec(body, default_timeout_s=60)


@pytest.mark.parametrize(
    "body",
    [
        {"code": "  \n"},
        {"code": "x", "gpu_id": 2},  # this host has GPUs 0 and 1
        {"code": "x", "gpus": 3},
        {"code": "x", "gpu_id": 0, "device": "cpu"},
        {"code": "x", "gpu_id": 0, "gpus": 2},
        {"code": "x", "save_model": True},
        {"code": "x", "timeout": 0},
        {"code": "x", "env": {"VRUNGPU_TASK_ID": "y"}},
        {"code": "x", "env": {"CUDA_VISIBLE_DEVICES": "0"}},
        {"code": "x", "env": {"1A": "y"}},
        {"code": "x", "requirements": ["--index-url=http://evil"]},
        {"code": "x", "requirements": ["pkg==${SECRET}"]},
        {"code": "x", "priority": 2**63},
        {"code": "x", "name": "a\x00b"},
        {"code": "x", "other": {"k\x00": 1}},
    ],
)
def test_what_the_gateway_refuses_is_schema_invalid(
    run_request: Draft202012Validator, body: dict[str, Any]
) -> None:
    assert list(run_request.iter_errors(body))


def test_integral_numbers_are_integers_and_64_bits_is_the_bound() -> None:
    assert parse_task_spec({"gpus": 2.0}, default_timeout_s=60).gpus == 2
    with pytest.raises(InvalidRequest, match="out of range"):
        parse_task_spec({"priority": 2**63}, default_timeout_s=60)
    with pytest.raises(InvalidRequest, match="out of range"):
        parse_task_spec({"priority": str(-(2**64))}, default_timeout_s=60, form=True)


def test_the_served_document_follows_the_host() -> None:
    none = build_spec(gpu_count=0)["components"]["schemas"]
    assert none["RunRequest"]["properties"]["device"]["enum"] == ["auto", "cpu"]
    assert none["KernelStart"]["properties"]["name"]["enum"] == ["vrungpu-cpu"]
    two = build_spec(gpu_count=2)["components"]["schemas"]
    assert two["KernelStart"]["properties"]["gpu_id"]["maximum"] == 1
    assert two["ProjectUpload"]["properties"]["gpus"]["maximum"] == 2


def test_every_body_may_be_too_large_and_json_bodies_of_another_type() -> None:
    for ops in build_spec()["paths"].values():
        for op in ops.values():
            if "requestBody" in op:
                assert "413" in op["responses"]
                json_body = "application/json" in op["requestBody"]["content"]
                assert ("415" in op["responses"]) == json_body


def test_form_field_and_file_names_may_be_utf8(tmp_path: Path) -> None:
    """RFC 7578: names are UTF-8 (the schemas let any name through; one was a 400)."""
    body = (
        b'--B\r\nContent-Disposition: form-data; name="n\xc3\xa9\xe5\x90\x8d"\r\n\r\nv\r\n'
        b'--B\r\nContent-Disposition: form-data; name="file"; filename="\xc3\xa9.py"\r\n\r\n'
        b"print(1)\r\n--B--\r\n"
    )
    sink = MultipartSink("multipart/form-data; boundary=B", tmp_path, max_file_bytes=2**20)
    sink.feed(body)
    sink.finish()
    assert sink.fields == {"né名": "v"}
    assert [f.filename for f in sink.files] == ["é.py"]
    sink.discard()
