"""A Python gRPC client that knows nothing of raftpg but what server reflection tells it.

Usage: reflection_client.py ADDR CA CERT KEY ACTION
  ACTION list:         print the services (grpc.reflection.v1alpha, as grpcio-reflection speaks)
  ACTION call METHOD:  call raftpg.control.v1.Control/METHOD with an empty request, print
                       the reply as text, or "DENIED <message>" on PERMISSION_DENIED.
"""
import sys

import grpc
from google.protobuf import descriptor_pool, message_factory, text_format
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def main():
    addr, ca, cert, key, action = sys.argv[1:6]
    creds = grpc.ssl_channel_credentials(
        root_certificates=open(ca, "rb").read(),
        private_key=open(key, "rb").read(),
        certificate_chain=open(cert, "rb").read(),
    )
    channel = grpc.secure_channel(addr, creds)
    if action == "list":
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        for reply in stub.ServerReflectionInfo(iter([request]), timeout=10):
            for service in reply.list_services_response.service:
                print(service.name)
        return
    method = sys.argv[6]
    pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
    service = pool.FindServiceByName("raftpg.control.v1.Control")
    m = service.FindMethodByName(method)
    request_class = message_factory.GetMessageClass(m.input_type)
    reply_class = message_factory.GetMessageClass(m.output_type)
    call = channel.unary_unary(
        f"/raftpg.control.v1.Control/{method}",
        request_serializer=request_class.SerializeToString,
        response_deserializer=reply_class.FromString,
    )
    try:
        reply = call(request_class(), timeout=10)
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.PERMISSION_DENIED:
            print("DENIED", e.details())
            return
        raise
    print(text_format.MessageToString(reply))


if __name__ == "__main__":
    main()
