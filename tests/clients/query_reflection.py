"""A query-API client not written in Rust: discovers homeostat.v1.Query through
server reflection alone (no generated code, no .proto file) and prints what
ListIncidents and GetIncident answer, as JSON.

Usage: python query_reflection.py HOST:PORT
"""
import json
import sys

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

channel = grpc.insecure_channel(sys.argv[1])
pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
service = pool.FindServiceByName("homeostat.v1.Query")


def call(name, **fields):
    method = service.FindMethodByName(name)
    request = message_factory.GetMessageClass(method.input_type)(**fields)
    reply_class = message_factory.GetMessageClass(method.output_type)
    stub = channel.unary_unary(
        f"/{service.full_name}/{name}",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=reply_class.FromString,
    )
    return json_format.MessageToDict(stub(request, timeout=10))


listed = call("ListIncidents")
out = {"methods": [m.name for m in service.methods], "list": listed}
incidents = listed.get("incidents", [])
if incidents:
    out["get"] = call("GetIncident", id=int(incidents[0]["id"]))
try:
    call("GetIncident", id=987654321)
except grpc.RpcError as error:
    out["unknown"] = error.code().name
print(json.dumps(out))
