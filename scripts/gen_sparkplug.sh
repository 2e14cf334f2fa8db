#!/usr/bin/env bash
# Regenerate derrick/wire/sparkplug_b_pb2.py (and .pyi) from the Sparkplug B 3.0 schema
# derrick/wire/sparkplug_b.proto. Only needed when that schema or the protobuf major
# changes: the generated module is committed, so installing Derrick needs no compiler.
# grpcio-tools (protoc as a Python package) goes into a throwaway venv, not the project's.
set -euo pipefail
cd "$(dirname "$0")/../derrick/wire"
tools="$(mktemp -d)"
trap 'rm -rf "$tools"' EXIT
python3 -m venv "$tools"
"$tools/bin/pip" install -q 'grpcio-tools>=1.85'
"$tools/bin/python" -m grpc_tools.protoc --proto_path=. --python_out=. --pyi_out=. sparkplug_b.proto
echo "regenerated derrick/wire/sparkplug_b_pb2.py from sparkplug_b.proto"
