"""Asks token-vault for a tenant's access token over gRPC and says what it is good for (never
printing the token itself), or why there is none.

Generate the stubs first (examples/python/README.md), then:

    PYTHONPATH=gen TOKEN_VAULT_TOKEN=... python get_access_token.py --target 127.0.0.1:50051 acme
"""

import argparse
import os
import sys
import time

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tokenvault.v1 import token_vault_pb2, token_vault_pb2_grpc

# The google.rpc.ErrorInfo domain of the vault's errors.
ERROR_DOMAIN = "tokenvault"


def error_reason(error: grpc.RpcError) -> str:
    """The vault's stable reason for a failed call (ErrorInfo.reason), or "" if it gave none."""
    status = rpc_status.from_call(error)
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            if info.domain == ERROR_DOMAIN:
                return info.reason
    return ""


def channel(target: str, ca_file: str | None) -> grpc.Channel:
    """Plaintext, or TLS trusting the CA in `ca_file`."""
    if ca_file is None:
        return grpc.insecure_channel(target)
    with open(ca_file, "rb") as f:
        return grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=f.read()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tenant")
    parser.add_argument("--target", default=os.environ.get("TOKEN_VAULT_TARGET", "127.0.0.1:50051"))
    parser.add_argument("--provider", default="", help="the vault's default provider if empty")
    parser.add_argument("--ca-file", help="the CA of the vault's certificate, for TLS")
    parser.add_argument("--timeout", type=float, default=5.0, help="the call's deadline in seconds")
    args = parser.parse_args()

    # A bearer token from the environment, never from the command line (process lists show it).
    bearer = os.environ.get("TOKEN_VAULT_TOKEN")
    metadata = [("authorization", f"Bearer {bearer}")] if bearer else []

    with channel(args.target, args.ca_file) as ch:
        stub = token_vault_pb2_grpc.TokenVaultStub(ch)
        request = token_vault_pb2.GetAccessTokenRequest(tenant_id=args.tenant, provider=args.provider)
        try:
            response = stub.GetAccessToken(request, timeout=args.timeout, metadata=metadata)
        except grpc.RpcError as e:
            reason = error_reason(e)
            # The reasons a caller acts on: send the user through BeginAuthorization.
            if reason == "CONNECTION_NOT_FOUND":
                print(f"{args.tenant}: not connected; start BeginAuthorization")
                return 0
            if reason == "REAUTHORIZATION_REQUIRED":
                print(f"{args.tenant}: the provider revoked the grant; connect again")
                return 0
            print(f"{args.tenant}: {e.code().name} {reason}: {e.details()}", file=sys.stderr)
            return 1

    valid_for = int(response.expires_at.seconds - time.time())
    scopes = " ".join(response.scopes)
    print(f"{args.tenant}: a {response.token_type} token for [{scopes}], valid for {valid_for}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
